//! Loading the files: rosterd.yaml, people.yaml and the group manifests, from raw serde types
//! to the validated model, every error collected with its file, line and column.
//!
//! Nothing here does network I/O or resolves a secret; `validate` runs on this alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::model::{DesiredGroup, Kind, MemberId, Mute, MuteSupport, RemovalLimit, Role, Unlisted};
use crate::provider::{CommonSettings, Instance, SettingError, SettingsInput, rest};

pub mod diag;
pub mod raw;
pub mod restrict;
pub mod secret;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics};

use raw::{IdValue, RawGroup, RawLimit, RawPeople, RawRoot, RawUnlisted};
use yaml::{Spanned, pos};

/// A validated tree: everything a run needs except secrets, which are resolved late.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The folder of rosterd.yaml; relative paths resolve against it.
    pub root: PathBuf,
    pub resync: Duration,
    pub listen: SocketAddr,
    pub audit_log: Option<PathBuf>,
    pub instances: BTreeMap<String, Instance>,
    pub groups: Vec<DesiredGroup>,
    /// Every file read, rosterd.yaml first.
    pub files: Vec<PathBuf>,
    /// Problems that do not stop a run: manifest files that define no group.
    pub warnings: Vec<String>,
}

/// The warning for a manifest file that defines no group: a truncated file or a bad merge
/// would otherwise pass as "0 groups" without a word. Nothing is removed for it either way.
pub fn no_group_warning(file: &Path) -> String {
    format!(
        "{}:1:1: warning: the file defines no group (it is empty, or holds only comments or \
         `---`); nothing in it is managed",
        file.display()
    )
}

/// What manifests are validated against: instances, people, teams and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub root_file: PathBuf,
    pub root: PathBuf,
    pub resync: Duration,
    pub listen: SocketAddr,
    pub audit_log: Option<PathBuf>,
    pub instances: BTreeMap<String, Instance>,
    pub people: People,
    pub unlisted: Unlisted,
    pub max_removals: RemovalLimit,
    /// The manifest files, sorted.
    pub manifest_files: Vec<PathBuf>,
    /// The folders named by `manifests:` (scanned recursively; the daemon watches them).
    pub manifest_dirs: Vec<PathBuf>,
    pub people_file: Option<PathBuf>,
    /// Instances whose entry has errors (already reported): groups using them are skipped
    /// rather than reported again as "unknown provider".
    pub broken_instances: BTreeSet<String>,
    /// The kinds of the broken instances where `kind` itself was valid: their groups are still
    /// checked against the kind (roles, ids, people), so one typo in rosterd.yaml does not hide
    /// the manifests' own problems.
    pub broken_kinds: BTreeMap<String, Kind>,
    /// `restrictions:` of rosterd.yaml; `None` = unrestricted.
    pub restrictions: Option<restrict::Restrictions>,
    /// Per instance: every id a person of people.yaml resolves to there, and that person.
    /// Shared by all the instance's groups (see [`DesiredGroup::names`]).
    pub names: BTreeMap<String, std::sync::Arc<BTreeMap<MemberId, String>>>,
}

/// people.yaml, checked: ids per person and team members, team cycles already refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct People {
    pub people: BTreeMap<String, BTreeMap<String, String>>,
    pub teams: BTreeMap<String, Vec<String>>,
}

/// Load and validate the whole tree. Every problem in every file is reported at once.
pub fn load(config_path: &Path) -> Result<Config, Diagnostics> {
    load_scanning_at_most(config_path, MAX_SCAN_ENTRIES)
}

/// [`load`] with another budget for the `manifests:` scan ([`MAX_SCAN_ENTRIES`]): the fuzzer
/// keeps it small, so an input naming `/` costs a few entries rather than a walk of the disk.
pub fn load_scanning_at_most(
    config_path: &Path,
    scan_budget: usize,
) -> Result<Config, Diagnostics> {
    // Errors in rosterd.yaml or people.yaml do not stop the manifests from being checked:
    // every file's problems are reported in one run.
    let (ctx, mut diags) = build_context_scanning(config_path, scan_budget)?;
    let mut groups: Vec<DesiredGroup> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut warnings = Vec::new();
    for file in &ctx.manifest_files {
        let (gs, names, d) = manifest(file, &ctx);
        if names.is_empty() && d.is_empty() {
            warnings.push(no_group_warning(file));
        }
        diags.extend(d);
        // Names are checked for uniqueness whether or not the group validated.
        for (name, at) in names {
            let here = format!("{}:{}:{}", file.display(), at.0, at.1);
            match seen.get(&name) {
                Some(first) => diags.push(Diagnostic::new(
                    file,
                    at,
                    format!("group {name:?} is defined twice: first at {first}"),
                )),
                None => {
                    seen.insert(name, here);
                }
            }
        }
        groups.extend(gs);
    }
    diags.extend(check_unique_targets(&groups));
    let mut files = vec![ctx.root_file.clone()];
    files.extend(ctx.people_file.clone());
    files.extend(ctx.manifest_files.iter().cloned());
    diags.into_result(Config {
        path: ctx.root_file.clone(),
        root: ctx.root.clone(),
        resync: ctx.resync,
        listen: ctx.listen,
        audit_log: ctx.audit_log.clone(),
        instances: ctx.instances.clone(),
        groups,
        files,
        warnings,
    })
}

/// Two manifests that manage the same provider group would undo each other's changes on every
/// run, so each (provider instance, group id) may be declared once. The daemon, which loads
/// files one by one, runs this over the groups of all files.
pub fn check_unique_targets(groups: &[DesiredGroup]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut seen: BTreeMap<(&str, &str), &DesiredGroup> = BTreeMap::new();
    for g in groups {
        match seen.get(&(g.provider.as_str(), g.id.as_str())) {
            Some(first) => {
                let (file, at) = split_source(&g.source);
                diags.push(Diagnostic::new(
                    &file,
                    at,
                    format!(
                        "group {}: provider {} group {} is already managed by group {} at {}",
                        g.name, g.provider, g.id, first.name, first.source
                    ),
                ));
            }
            None => {
                seen.insert((g.provider.as_str(), g.id.as_str()), g);
            }
        }
    }
    diags
}

/// `file:line:col` (as [`DesiredGroup::source`] holds it) back into its parts.
fn split_source(source: &str) -> (PathBuf, (u64, u64)) {
    let mut parts = source.rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
    let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(1);
    (PathBuf::from(parts.next().unwrap_or(source)), (line, col))
}

/// The largest file rosterd reads as configuration. A manifest of thousands of members is a few
/// hundred KiB; anything bigger is a wrong path (a log, an image, `/dev/zero`), not a roster.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

fn read(path: &Path) -> Result<String, Diagnostics> {
    read_bounded(path, MAX_FILE_BYTES)
        .map_err(|message| Diagnostics(vec![Diagnostic::new(path, (1, 1), message)]))
}

/// Read a regular file of at most `max` bytes. A FIFO, a device or a socket would block or
/// never end, so only regular files (after following symlinks) are read; the size is checked
/// again on the bytes actually read, since a file can grow between `metadata` and `read`.
pub fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read file: not a regular file".into());
    }
    let too_big = || format!("cannot read file: larger than {} bytes", max);
    if meta.len() > max {
        return Err(too_big());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read file: {e}"))?;
    if text.len() as u64 > max {
        return Err(too_big());
    }
    Ok(text)
}

fn parse_err(file: &Path, e: yaml::YamlError) -> Diagnostics {
    Diagnostics(vec![Diagnostic::new(file, (e.line, e.column), e.message)])
}

/// Load rosterd.yaml and people.yaml: everything manifests are validated against.
pub fn load_context(config_path: &Path) -> Result<Context, Diagnostics> {
    let (ctx, diags) = build_context(config_path)?;
    diags.into_result(ctx)
}

/// The context as far as it could be built, and the problems found on the way. `Err` only
/// when rosterd.yaml cannot be read or parsed at all.
fn build_context(config_path: &Path) -> Result<(Context, Diagnostics), Diagnostics> {
    build_context_scanning(config_path, MAX_SCAN_ENTRIES)
}

fn build_context_scanning(
    config_path: &Path,
    scan_budget: usize,
) -> Result<(Context, Diagnostics), Diagnostics> {
    let text = read(config_path)?;
    let root_raw: RawRoot = yaml::from_str(&text).map_err(|e| parse_err(config_path, e))?;
    let root = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let rel = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { root.join(p) }
    };
    let mut diags = Diagnostics::default();
    let f = config_path;

    let resync = match &root_raw.resync {
        None => Duration::from_secs(300),
        Some(s) => match humantime::parse_duration(&s.value) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                diags.push(Diagnostic::new(
                    f,
                    pos(s),
                    format!(
                        "resync: expected a duration such as 5m, found {:?}",
                        s.value
                    ),
                ));
                Duration::from_secs(300)
            }
        },
    };
    let default_listen: SocketAddr = "127.0.0.1:9464".parse().expect("a valid address");
    let listen = match &root_raw.listen {
        None => default_listen,
        Some(s) => s.value.parse().unwrap_or_else(|_| {
            diags.push(Diagnostic::new(
                f,
                pos(s),
                format!(
                    "listen: expected an address such as 127.0.0.1:9464, found {:?}",
                    s.value
                ),
            ));
            default_listen
        }),
    };
    let unlisted = unlisted_of(root_raw.defaults.unlisted).unwrap_or_default();
    let max_removals = match &root_raw.defaults.max_removals {
        None => RemovalLimit::Percent(10.0),
        Some(s) => limit(f, s, &mut diags).unwrap_or(RemovalLimit::Percent(10.0)),
    };

    // Manifest files: folders are scanned recursively for *.yaml / *.yml.
    let entries = match &root_raw.manifests.value {
        raw::OneOrMany::One(s) => vec![s.clone()],
        raw::OneOrMany::Many(v) => v.clone(),
    };
    let mut manifest_files = BTreeSet::new();
    let mut manifest_dirs = Vec::new();
    let mut seen = BTreeSet::new();
    let mut budget = scan_budget;
    for e in &entries {
        let p = rel(e);
        if p.is_dir() {
            if scan(&p, &mut manifest_files, &mut seen, &mut budget).is_err() {
                diags.push(Diagnostic::new(
                    f,
                    pos(&root_raw.manifests),
                    format!(
                        "manifests: {} holds more than {scan_budget} files and folders; \
                         name the folder that holds the group manifests",
                        p.display()
                    ),
                ));
                break;
            }
            manifest_dirs.push(p);
        } else if p.is_file() {
            manifest_files.insert(p);
        } else {
            diags.push(Diagnostic::new(
                f,
                pos(&root_raw.manifests),
                format!("manifests: {} is neither a folder nor a file", p.display()),
            ));
        }
    }
    let people_file = root_raw.people.as_ref().map(|p| rel(&p.value));
    // By the file itself (device and inode), not its path: a folder may reach rosterd.yaml
    // through a link.
    let file_id = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    let not_manifests: Vec<(u64, u64)> = people_file
        .iter()
        .map(PathBuf::as_path)
        .chain([config_path])
        .filter_map(file_id)
        .collect();
    manifest_files.retain(|p| file_id(p).is_none_or(|id| !not_manifests.contains(&id)));

    let mut instances = BTreeMap::new();
    let mut broken_instances = BTreeSet::new();
    let mut broken_kinds = BTreeMap::new();
    for (name, entry) in &root_raw.providers {
        match instance(f, &root, name, entry, &mut diags) {
            Ok(inst) => {
                instances.insert(name.clone(), inst);
            }
            Err(kind) => {
                broken_instances.insert(name.clone());
                broken_kinds.extend(kind.map(|k| (name.clone(), k)));
            }
        }
    }

    // Keys of a person's ids: every instance name (valid or not) and every kind, each with
    // the kind whose id syntax applies.
    let mut id_keys: BTreeMap<String, Kind> = Kind::ALL
        .iter()
        .map(|&k| (k.as_str().to_string(), k))
        .collect();
    id_keys.extend(instances.iter().map(|(n, i)| (n.clone(), i.kind)));
    id_keys.extend(broken_kinds.iter().map(|(n, k)| (n.clone(), *k)));
    let people = match &people_file {
        None => People::default(),
        // A people.yaml with semantic errors still serves the manifests' checks, so a wrong
        // id of one person does not turn every other name into an error too.
        Some(pf) => match people_of(pf, Some(&id_keys), &broken_instances) {
            Ok((p, d)) => {
                diags.extend(d);
                p
            }
            Err(d) => {
                diags.extend(d);
                People::default()
            }
        },
    };

    let restrictions = root_raw
        .restrictions
        .as_ref()
        .map(|r| restrict::Restrictions::build(f, r, &instances, &broken_instances, &mut diags));

    let mut ctx = Context {
        names: BTreeMap::new(),
        restrictions,
        broken_instances,
        broken_kinds,
        root_file: config_path.to_path_buf(),
        root: root.clone(),
        resync,
        listen,
        audit_log: root_raw.audit_log.as_deref().map(rel),
        instances,
        people,
        unlisted,
        max_removals,
        manifest_files: manifest_files.into_iter().collect(),
        manifest_dirs,
        people_file,
    };
    ctx.names = ctx
        .instances
        .values()
        .map(|i| {
            let names = people_by_id(&ctx, &i.name, i.kind);
            (i.name.clone(), std::sync::Arc::new(names))
        })
        .collect();
    Ok((ctx, diags))
}

/// Every id of instance `instance` a person of people.yaml resolves to, and that person (the
/// first by name where two share an id).
pub fn people_by_id(ctx: &Context, instance: &str, kind: Kind) -> BTreeMap<MemberId, String> {
    let mut by_id = BTreeMap::new();
    for person in ctx.people.people.keys() {
        trace_entry(ctx, instance, kind, person, &mut |m, _, _| {
            by_id.entry(m).or_insert_with(|| person.clone());
        });
    }
    by_id
}

/// How many entries a `manifests:` folder may hold below it, files and folders together. A
/// repository's manifests are hundreds; a scan past this is a wrong path (`/`, a home folder).
pub const MAX_SCAN_ENTRIES: usize = 100_000;

/// The scan stopped at [`MAX_SCAN_ENTRIES`].
struct TooManyEntries;

/// Every *.yaml / *.yml below `dir`. Symlinks are followed (a Kubernetes ConfigMap's files are
/// symlinks), but each real folder (device and inode) is entered once, so a link back to an
/// ancestor ends.
fn scan(
    dir: &Path,
    out: &mut BTreeSet<PathBuf>,
    seen: &mut BTreeSet<(u64, u64)>,
    budget: &mut usize,
) -> Result<(), TooManyEntries> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        *budget = budget.checked_sub(1).ok_or(TooManyEntries)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // .git, editor swap files, ConfigMap ..data internals
        }
        let p = e.path();
        // The entry's own type costs no system call; only a link needs a look at its target.
        let is_dir = match e.file_type() {
            Ok(t) if t.is_symlink() => p.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => false,
        };
        if is_dir {
            scan(&p, out, seen, budget)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.insert(p);
        }
    }
    Ok(())
}

fn unlisted_of(u: Option<RawUnlisted>) -> Option<Unlisted> {
    u.map(|u| match u {
        RawUnlisted::Remove => Unlisted::Remove,
        RawUnlisted::Keep => Unlisted::Keep,
    })
}

fn limit(file: &Path, s: &Spanned<RawLimit>, diags: &mut Diagnostics) -> Option<RemovalLimit> {
    match &s.value {
        RawLimit::Count(n) => Some(RemovalLimit::Count(*n as usize)),
        RawLimit::Text(t) => {
            let parsed = t
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok());
            match parsed {
                Some(p) if (0.0..=100.0).contains(&p) => Some(RemovalLimit::Percent(p)),
                _ => {
                    diags.push(Diagnostic::new(file, pos(s), format!("max_removals: expected a count or a percentage such as 10%, found {t:?}")));
                    None
                }
            }
        }
    }
}

/// Parse `rate`: `10/s`, `600/m`, `100/min`, `3600/h`, or a plain number per second.
pub fn parse_rate(s: &str) -> Option<f64> {
    let s = s.trim();
    let (n, per) = match s.split_once('/') {
        Some((n, unit)) => {
            let secs = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                other => humantime::parse_duration(other).ok()?.as_secs_f64(),
            };
            (n.trim().parse::<f64>().ok()?, secs)
        }
        None => (s.parse::<f64>().ok()?, 1.0),
    };
    let r = n / per;
    (r.is_finite() && r > 0.0).then_some(r)
}

const COMMON_KEYS: [&str; 10] = [
    "ca_file",
    "proxy",
    "base_url",
    "batch_size",
    "concurrency",
    "interval",
    "rate",
    "timeout",
    "protected",
    "kind",
];

/// One `providers:` entry: `kind`, the common keys, and the kind's own keys (parsed and
/// checked by the kind's spec, every problem at the position of the key it concerns).
fn instance(
    file: &Path,
    root: &Path,
    name: &str,
    entry: &Spanned<BTreeMap<String, Spanned<raw::Node>>>,
    diags: &mut Diagnostics,
) -> Result<Instance, Option<Kind>> {
    let before = diags.len();
    // The entry's values as plain data, each with its position.
    let map: BTreeMap<&str, (serde_json::Value, (u64, u64))> = (entry.value.iter())
        .map(|(k, v)| (k.as_str(), (v.value.to_json(), pos(v))))
        .collect();
    let at = |key: &str| map.get(key).map_or(pos(entry), |v| v.1);
    let Some((kind_v, kind_at)) = map.get("kind") else {
        diags.push(Diagnostic::new(
            file,
            pos(entry),
            format!("provider {name}: missing `kind` (one of {})", kind_names()),
        ));
        return Err(None);
    };
    let Some(kind) = kind_v.as_str().and_then(Kind::parse) else {
        diags.push(Diagnostic::new(
            file,
            *kind_at,
            format!(
                "provider {name}: kind must be one of {}, found {kind_v}",
                kind_names(),
            ),
        ));
        return Err(None);
    };
    let mut common = CommonSettings::default();
    let str_of = |key: &str, diags: &mut Diagnostics| -> Option<String> {
        let (v, at) = map.get(key)?;
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                diags.push(Diagnostic::new(
                    file,
                    *at,
                    format!("provider {name}: {key}: expected a string, found {v}"),
                ));
                None
            }
        }
    };
    if let Some(u) = str_of("base_url", diags) {
        match rest::parse_http_url(&u) {
            Ok(_) => common.base_url = Some(u.trim().trim_end_matches('/').to_string()),
            Err(_) => diags.push(Diagnostic::new(
                file,
                at("base_url"),
                format!(
                    "provider {name}: base_url: expected an http:// or https:// URL, found {u:?}"
                ),
            )),
        }
    }
    if let Some(f) = str_of("ca_file", diags) {
        let path = root.join(f.trim());
        match crate::provider::http::read_ca_file(&path) {
            Ok(_) => common.ca_file = Some(path),
            Err(e) => diags.push(Diagnostic::new(
                file,
                at("ca_file"),
                format!("provider {name}: {e}"),
            )),
        }
    }
    if let Some(p) = str_of("proxy", diags) {
        match rest::parse_http_url(&p) {
            Ok(_) => common.proxy = Some(p.trim().to_string()),
            Err(bad) => diags.push(Diagnostic::new(
                file,
                at("proxy"),
                format!(
                    "provider {name}: proxy {}",
                    rest::url_message(&bad, "http://proxy.internal:3128")
                ),
            )),
        }
    }
    if let Some((v, at)) = map.get("batch_size") {
        match v.as_u64() {
            Some(n) if n >= 1 => common.batch_size = Some(n as usize),
            _ => diags.push(Diagnostic::new(
                file,
                *at,
                format!("provider {name}: batch_size: expected a positive integer, found {v}"),
            )),
        }
    }
    if let Some((v, at)) = map.get("concurrency") {
        match v.as_u64() {
            Some(n) if n >= 1 => common.concurrency = Some(n as usize),
            _ => diags.push(Diagnostic::new(
                file,
                *at,
                format!(
                    "provider {name}: concurrency: expected a positive integer (groups at a time), found {v}"
                ),
            )),
        }
    }
    for key in ["interval", "timeout"] {
        // A bare number (`interval: 5`) is a common slip; it gets the duration message too.
        if let Some(s) = map.get(key).map(|v| scalar_text(&v.0)) {
            match humantime::parse_duration(&s) {
                Ok(d) if key == "interval" => common.interval = Some(d),
                Ok(d) if !d.is_zero() => common.timeout = Some(d),
                _ => diags.push(Diagnostic::new(file, at(key), format!("provider {name}: {key}: expected a duration such as 200ms or 15s, found {s:?}"))),
            }
        }
    }
    if let Some((v, at)) = map.get("rate") {
        let text = scalar_text(v);
        match parse_rate(&text) {
            Some(r) => common.rate = Some(r),
            None => diags.push(Diagnostic::new(file, *at, format!("provider {name}: rate: expected requests per time such as 10/s or 600/m, found {text:?}"))),
        }
    }
    if let Some((v, at)) = map.get("protected") {
        match v.as_array() {
            Some(items) => {
                for it in items {
                    let raw = it
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| it.to_string());
                    match kind.normalize_member(&raw) {
                        Ok(m) => common.protected.push(m),
                        Err(e) => diags.push(Diagnostic::new(
                            file,
                            *at,
                            format!("provider {name}: protected: expected {e}"),
                        )),
                    }
                }
            }
            None => diags.push(Diagnostic::new(
                file,
                *at,
                format!("provider {name}: protected: expected a list of ids"),
            )),
        }
    }

    // The kind's own keys, with relative secret files rooted at rosterd.yaml's folder.
    let own: serde_json::Map<String, serde_json::Value> = (map.iter())
        .filter(|(k, _)| !COMMON_KEYS.contains(k))
        .map(|(k, (v, _))| (k.to_string(), root_secret_files(v.clone(), root)))
        .collect();
    let input = SettingsInput {
        name,
        root,
        common: &common,
        own: serde_json::Value::Object(own),
    };
    let settings = match (kind.spec().settings)(&input) {
        Ok(s) => Some(s),
        Err(errors) => {
            for e in errors {
                diags.push(setting_diagnostic(file, name, kind, entry, e));
            }
            None
        }
    };
    match settings {
        Some(settings) if diags.len() == before => Ok(Instance {
            name: name.to_string(),
            kind,
            common,
            settings,
        }),
        _ => Err(Some(kind)),
    }
}

/// A kind's settings problem at the position of the key it names: the deepest node of its
/// path found in the entry (`oauth.endpoint`: the endpoint's value), else the entry.
fn setting_diagnostic(
    file: &Path,
    name: &str,
    kind: Kind,
    entry: &Spanned<BTreeMap<String, Spanned<raw::Node>>>,
    e: SettingError,
) -> Diagnostic {
    let mut at = pos(entry);
    if let Some(key) = &e.key {
        let path: Vec<&str> = key.split('.').collect();
        if let Some(top) = entry.value.get(path[0]) {
            at = pos(top);
            for depth in (1..path.len()).rev() {
                if let Some(node) = raw::Node::find(top, &path[1..=depth]) {
                    at = pos(node);
                    break;
                }
            }
        }
    }
    let key = e.key.map(|k| format!("{k}: ")).unwrap_or_default();
    Diagnostic::new(
        file,
        at,
        format!("provider {name} ({kind}): {key}{}", e.message),
    )
}

/// "cometchat, tencent, waha, bitrix24": every kind, so a new kind needs no edit here.
fn kind_names() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A scalar as the text the user wrote: strings unquoted, numbers as digits.
fn scalar_text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// `{ file: relative }` secret references resolve against the folder of rosterd.yaml.
fn root_secret_files(v: serde_json::Value, root: &Path) -> serde_json::Value {
    match v {
        serde_json::Value::Object(mut m) => {
            if m.len() == 1
                && let Some(serde_json::Value::String(p)) = m.get("file")
                && Path::new(p).is_relative()
            {
                let joined = root.join(p).to_string_lossy().into_owned();
                m.insert("file".to_string(), serde_json::Value::String(joined));
                return serde_json::Value::Object(m);
            }
            serde_json::Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, root_secret_files(v, root)))
                    .collect(),
            )
        }
        other => other,
    }
}

/// people.yaml on its own: ids per person, team members, and no team cycles. Ids are not
/// checked against provider kinds here (that needs rosterd.yaml; [`load_context`] does it).
pub fn load_people(path: &Path) -> Result<People, Diagnostics> {
    let (people, diags) = people_of(path, None, &BTreeSet::new())?;
    diags.into_result(people)
}

/// people.yaml as far as it could be read, and its problems. With `id_keys` (instance and
/// kind names -> the kind whose syntax applies), every id is checked and unknown keys are
/// refused. `Err` only when the file cannot be read or parsed.
fn people_of(
    path: &Path,
    id_keys: Option<&BTreeMap<String, Kind>>,
    broken_instances: &BTreeSet<String>,
) -> Result<(People, Diagnostics), Diagnostics> {
    let text = read(path)?;
    let raw: RawPeople = if text.trim().is_empty() {
        RawPeople::default()
    } else {
        yaml::from_str(&text).map_err(|e| parse_err(path, e))?
    };
    let mut diags = Diagnostics::default();
    let mut people = People::default();
    for (name, ids) in &raw.people {
        if name.starts_with('@') {
            diags.push(Diagnostic::new(
                path,
                pos(ids),
                format!("person {name:?}: names must not start with @ (that marks a team)"),
            ));
        }
        for (key, id) in ids.value.iter().filter(|_| id_keys.is_some()) {
            match id_keys.and_then(|k| k.get(key)) {
                Some(kind) => {
                    if let Err(e) = kind.normalize_member(&id.value.text()) {
                        diags.push(Diagnostic::new(
                            path,
                            pos(id),
                            format!("person {name}: {key}: expected {e}"),
                        ));
                    }
                }
                None if broken_instances.contains(key) => {}
                None => diags.push(Diagnostic::new(
                    path,
                    pos(id),
                    format!(
                        "person {name}: {key:?} is neither a provider instance of rosterd.yaml nor a provider kind ({})",
                        kind_names()
                    ),
                )),
            }
        }
        let m: BTreeMap<String, String> = ids
            .value
            .iter()
            .map(|(k, v)| (k.clone(), v.value.text()))
            .collect();
        people.people.insert(name.clone(), m);
    }
    for (team, members) in &raw.teams {
        if raw.people.contains_key(team) {
            diags.push(Diagnostic::new(
                path,
                pos(members),
                format!("team {team:?} has the name of a person; use another name"),
            ));
        }
        let list: Vec<String> = members.value.iter().map(|m| m.value.text()).collect();
        for (m, sp) in list.iter().zip(&members.value) {
            if let Some(t) = m.strip_prefix('@')
                && !raw.teams.contains_key(t)
            {
                diags.push(Diagnostic::new(
                    path,
                    pos(sp),
                    format!("team {team:?}: unknown team @{t}"),
                ));
            }
        }
        people.teams.insert(team.clone(), list);
    }
    // Cycles: depth-first search over team references.
    for (team, members) in &raw.teams {
        let mut stack = vec![team.clone()];
        // Report each cycle once: from its alphabetically first team.
        if let Some(cycle) = find_cycle(&people.teams, team, &mut stack)
            && cycle.iter().all(|t| t >= team)
        {
            diags.push(Diagnostic::new(
                path,
                pos(members),
                format!(
                    "team cycle: {}",
                    cycle
                        .iter()
                        .map(|t| format!("@{t}"))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            ));
        }
    }
    Ok((people, diags))
}

fn find_cycle(
    teams: &BTreeMap<String, Vec<String>>,
    team: &str,
    stack: &mut Vec<String>,
) -> Option<Vec<String>> {
    for m in teams.get(team).into_iter().flatten() {
        let Some(t) = m.strip_prefix('@') else {
            continue;
        };
        if t == stack[0] {
            let mut c = stack.clone();
            c.push(t.to_string());
            return Some(c);
        }
        if stack.iter().any(|s| s == t) {
            continue; // a cycle not through the start; reported from its own start
        }
        stack.push(t.to_string());
        if let Some(c) = find_cycle(teams, t, stack) {
            return Some(c);
        }
        stack.pop();
    }
    None
}

/// Load one manifest file (any number of documents) against a context.
pub fn load_manifest_file(path: &Path, ctx: &Context) -> Result<Vec<DesiredGroup>, Diagnostics> {
    let (groups, names, mut diags) = manifest(path, ctx);
    let mut seen: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (name, at) in names {
        if let Some(first) = seen.get(&name) {
            diags.push(Diagnostic::new(
                path,
                at,
                format!(
                    "group {name:?} is defined twice: first at {}:{}:{}",
                    path.display(),
                    first.0,
                    first.1
                ),
            ));
        } else {
            seen.insert(name, at);
        }
    }
    diags.into_result(groups)
}

/// A group name and where its document declares it.
type NamedAt = (String, (u64, u64));

/// The valid groups of a file, the name and position of every document that has one, and
/// the problems found.
fn manifest(path: &Path, ctx: &Context) -> (Vec<DesiredGroup>, Vec<NamedAt>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let text = match read(path) {
        Ok(t) => t,
        Err(d) => return (Vec::new(), Vec::new(), d),
    };
    let mut groups = Vec::new();
    let mut names = Vec::new();
    for doc in yaml::from_str_multi::<RawGroup>(&text) {
        match doc {
            Ok(d) => {
                names.push((d.group.value.trim().to_string(), pos(&d.group)));
                groups.extend(group(path, &d, ctx, &mut diags));
            }
            Err(e) => diags.extend(parse_err(path, e)),
        }
    }
    (groups, names, diags)
}

/// Validate one manifest document into a desired group.
fn group(
    file: &Path,
    doc: &RawGroup,
    ctx: &Context,
    diags: &mut Diagnostics,
) -> Option<DesiredGroup> {
    let before = diags.len();
    let name = doc.group.value.trim().to_string();
    if name.is_empty() {
        diags.push(Diagnostic::new(
            file,
            pos(&doc.group),
            "group: expected a non-empty name",
        ));
    }
    // A broken instance was reported in rosterd.yaml; its groups are still checked against
    // its kind when the kind is known, and produce no group.
    let inst = ctx.instances.get(&doc.provider.value);
    let kind = match (inst, ctx.broken_kinds.get(&doc.provider.value)) {
        (Some(i), _) => Some(i.kind),
        (None, Some(k)) => Some(*k),
        (None, None) if ctx.broken_instances.contains(&doc.provider.value) => return None,
        (None, None) => None,
    };
    let inst_name = doc.provider.value.as_str();
    let Some(kind) = kind else {
        let known: BTreeSet<&str> = ctx
            .instances
            .keys()
            .chain(&ctx.broken_instances)
            .map(String::as_str)
            .collect();
        let known: Vec<&str> = known.into_iter().collect();
        diags.push(Diagnostic::new(
            file,
            pos(&doc.provider),
            format!(
                "group {name}: unknown provider instance {:?} (rosterd.yaml defines: {})",
                doc.provider.value,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
        return None;
    };
    let caps = kind.capabilities();
    let id = match kind.normalize_group(&doc.id.value.text()) {
        Ok(id) => id,
        Err(e) => {
            diags.push(Diagnostic::new(
                file,
                pos(&doc.id),
                format!("group {name}: id: expected {e}"),
            ));
            return None;
        }
    };
    if let Some(r) = &ctx.restrictions
        && let Err(why) = r.check(&ctx.root, file, inst_name, &id)
    {
        diags.push(Diagnostic::new(
            file,
            pos(&doc.id),
            format!("group {name}: {why}"),
        ));
    }
    let resolver = Resolver {
        file,
        ctx,
        instance: inst_name,
        kind,
        group: &name,
    };

    // Roles: highest wins, silently.
    let mut members: BTreeMap<MemberId, Role> = BTreeMap::new();
    for (list, role, key) in [
        (&doc.admins, Role::Admin, "admins"),
        (&doc.moderators, Role::Moderator, "moderators"),
        (&doc.participants, Role::Participant, "participants"),
    ] {
        let Some(list) = list else { continue };
        if !caps.supports_role(role) && !list.value.is_empty() {
            diags.push(Diagnostic::new(file, pos(list), format!(
                "group {name}: provider {} ({kind}) has no {role} role; `{key}` cannot be used here",
                inst_name
            )));
            continue;
        }
        for entry in &list.value {
            for m in resolver.resolve(entry, diags) {
                let r = members.entry(m).or_insert(role);
                *r = (*r).max(role);
            }
        }
    }

    let owner = doc.owner.as_ref().and_then(|o| {
        let ids = resolver.resolve(o, diags);
        match ids.as_slice() {
            [one] => Some(one.clone()),
            [] => None,
            _ => {
                diags.push(Diagnostic::new(
                    file,
                    pos(o),
                    format!("group {name}: owner must be one member, not a team"),
                ));
                None
            }
        }
    });

    let bans = doc.bans.as_ref().and_then(|list| {
        if !caps.bans {
            diags.push(Diagnostic::new(
                file,
                pos(list),
                format!(
                    "group {name}: provider {} ({kind}) cannot ban members; remove `bans`",
                    inst_name
                ),
            ));
            return None;
        }
        let mut set = BTreeSet::new();
        for entry in &list.value {
            for m in resolver.resolve(entry, diags) {
                if members.contains_key(&m) || owner.as_ref() == Some(&m) {
                    diags.push(Diagnostic::new(
                        file,
                        pos(entry),
                        format!("group {name}: {m} is both banned and listed as a member"),
                    ));
                }
                set.insert(m);
            }
        }
        Some(set)
    });

    let mutes = doc.mutes.as_ref().and_then(|list| {
        if caps.mutes == MuteSupport::No {
            diags.push(Diagnostic::new(file, pos(list), format!("group {name}: provider {} ({kind}) cannot mute members; remove `mutes`", inst_name)));
            return None;
        }
        let mut map = BTreeMap::new();
        for entry in &list.value {
            let until = match &entry.until {
                None => Mute::Indefinite,
                Some(u) => match parse_time(&u.value) {
                    Some(t) if caps.mutes == MuteSupport::Timed => Mute::Until(t),
                    Some(_) => {
                        diags.push(Diagnostic::new(file, pos(u), format!("group {name}: provider {} ({kind}) mutes only indefinitely; remove `until`", inst_name)));
                        continue;
                    }
                    None => {
                        diags.push(Diagnostic::new(file, pos(u), format!("group {name}: until: expected an RFC 3339 time such as 2026-12-31T00:00:00Z, found {:?}", u.value)));
                        continue;
                    }
                },
            };
            for m in resolver.resolve(&entry.member, diags) {
                if !members.contains_key(&m) && owner.as_ref() != Some(&m) {
                    diags.push(Diagnostic::new(file, pos(&entry.member), format!("group {name}: {m} is muted but not a member")));
                }
                map.insert(m, until);
            }
        }
        Some(map)
    });

    let max_removals = match &doc.max_removals {
        Some(s) => limit(file, s, diags).unwrap_or(ctx.max_removals),
        None => ctx.max_removals,
    };
    if diags.len() > before {
        return None;
    }
    let inst = inst?;
    let (line, col) = pos(&doc.group);
    let names = ctx.names.get(inst_name).cloned().unwrap_or_default();
    Some(DesiredGroup {
        name,
        provider: inst.name.clone(),
        kind,
        id,
        owner,
        members,
        bans,
        mutes,
        unlisted: unlisted_of(doc.unlisted).unwrap_or(ctx.unlisted),
        max_removals,
        protected: inst.common.protected.iter().cloned().collect(),
        source: format!("{}:{line}:{col}", file.display()),
        names,
    })
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok().filter(|_| {
        // Require an explicit offset: a time without a zone is ambiguous.
        let t = s.trim();
        t.ends_with('Z')
            || t.ends_with('z')
            || t.rsplit_once(['+', '-'])
                .is_some_and(|(_, z)| z.contains(':') && z.len() == 5)
    })
}

/// Turns a manifest entry into provider ids for one instance.
struct Resolver<'a> {
    file: &'a Path,
    ctx: &'a Context,
    /// The provider instance's name and kind.
    instance: &'a str,
    kind: Kind,
    group: &'a str,
}

/// What one member of an entry came through: the person (if any) and the teams, outermost first.
pub type Visit<'a, 'v> = &'v mut dyn FnMut(MemberId, Option<&'a str>, &[&'a str]);

impl<'a> Resolver<'a> {
    fn resolve(&self, entry: &Spanned<IdValue>, diags: &mut Diagnostics) -> Vec<MemberId> {
        let mut out = Vec::new();
        self.walk(
            &entry.value.text(),
            pos(entry),
            diags,
            &mut Vec::new(),
            &mut |m, _, _| out.push(m),
        );
        out
    }

    fn walk(
        &self,
        text: &str,
        at: (u64, u64),
        diags: &mut Diagnostics,
        chain: &mut Vec<&'a str>,
        visit: Visit<'a, '_>,
    ) {
        let kind = self.kind;
        if let Some(team) = text.strip_prefix('@') {
            let Some((team, members)) = self.ctx.people.teams.get_key_value(team) else {
                diags.push(Diagnostic::new(
                    self.file,
                    at,
                    format!("group {}: unknown team @{team}", self.group),
                ));
                return;
            };
            if chain.len() > 64 {
                return; // cycles are reported by people.yaml validation
            }
            chain.push(team);
            for m in members {
                self.walk(m, at, diags, chain, visit);
            }
            chain.pop();
            return;
        }
        if let Some((person, ids)) = self.ctx.people.people.get_key_value(text) {
            let id = ids.get(self.instance).or_else(|| ids.get(kind.as_str()));
            match id {
                Some(id) => match kind.normalize_member(id) {
                    Ok(m) => visit(m, Some(person), chain),
                    Err(e) => diags.push(Diagnostic::new(self.file, at, format!(
                        "group {}: person {text} has an invalid {kind} id in people.yaml: expected {e}", self.group
                    ))),
                },
                None => diags.push(Diagnostic::new(self.file, at, format!(
                    "group {}: person {text} has no id for provider instance {} or kind {kind} in people.yaml",
                    self.group, self.instance
                ))),
            }
            return;
        }
        match kind.normalize_member(text) {
            Ok(m) => visit(m, None, chain),
            Err(e) => diags.push(Diagnostic::new(self.file, at, format!(
                "group {}: {text:?} is not a person in people.yaml, a @team, or a raw id: expected {e}",
                self.group
            ))),
        }
    }
}

/// Walk one manifest entry (a person, `@team` or raw id) of a group of `instance` as validation
/// resolves it, calling `visit` for every member it brings in with the person and the chain of
/// teams it came through. For a tree that validated; problems are ignored here.
pub fn trace_entry<'a>(
    ctx: &'a Context,
    instance: &'a str,
    kind: Kind,
    text: &str,
    visit: Visit<'a, '_>,
) {
    let r = Resolver {
        file: &ctx.root_file,
        ctx,
        instance,
        kind,
        group: "",
    };
    r.walk(
        text,
        (1, 1),
        &mut Diagnostics::default(),
        &mut Vec::new(),
        visit,
    );
}

#[cfg(test)]
mod tests;
