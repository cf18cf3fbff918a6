//! The daemon's view of the files: the last valid version of everything. A file that fails to
//! parse or validate keeps its last valid groups in force and its error is reported until it is
//! fixed; a manifest file that disappears takes its groups out of management (nothing is
//! removed from the provider); a rosterd.yaml or people.yaml that fails keeps the previous
//! configuration running.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::config::{self, Context, Diagnostic, Diagnostics};
use crate::model::DesiredGroup;

#[derive(Debug, Clone, Default)]
struct ManifestFile {
    /// Hash of the contents last validated (valid or not), to skip unchanged files.
    hash: u64,
    /// The last valid groups of the file.
    groups: Vec<DesiredGroup>,
    /// Set while the file's current contents are invalid.
    error: Option<Diagnostics>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reload {
    /// Groups that are new or whose desired state changed: reconcile them.
    pub changed: BTreeSet<String>,
    /// Groups no longer declared: stop managing them (nothing is removed).
    pub dropped: BTreeSet<String>,
    /// rosterd.yaml or people.yaml changed and validated (provider clients are rebuilt only
    /// for instances whose own settings changed).
    pub context_changed: bool,
}

/// The last valid configuration and manifests, file by file.
#[derive(Debug)]
pub struct Tree {
    config_path: PathBuf,
    ctx: Option<Context>,
    ctx_error: Option<Diagnostics>,
    files: BTreeMap<PathBuf, ManifestFile>,
    groups: BTreeMap<String, DesiredGroup>,
    duplicate_errors: Vec<Diagnostic>,
}

fn hash_file(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// What a rescan starts from: the configuration in force and the hash of every manifest. Taken
/// from the [`Tree`] under its lock in a moment; the scan itself needs no lock.
#[derive(Debug, Clone)]
pub struct Basis {
    config_path: PathBuf,
    ctx: Option<Context>,
    hashes: BTreeMap<PathBuf, u64>,
}

/// One manifest file as a scan found it.
#[derive(Debug)]
struct Scanned {
    path: PathBuf,
    hash: u64,
    /// Its validation, when its contents (or the configuration) changed since the basis.
    validated: Option<Result<Vec<DesiredGroup>, Diagnostics>>,
}

/// What a rescan read, ready to fold into the [`Tree`].
#[derive(Debug)]
pub struct Scan {
    ctx: Result<Context, Diagnostics>,
    files: Vec<Scanned>,
    /// Files read (rosterd.yaml and people.yaml count as read by the configuration load).
    pub reads: usize,
}

impl Basis {
    /// Read and hash every file, validating only what changed. Blocking file I/O: the daemon
    /// runs this on a blocking task so its HTTP endpoints keep answering.
    pub fn scan(self) -> Scan {
        let loaded = config::load_context(&self.config_path);
        let mut reads = 1;
        let fresh = match &loaded {
            Ok(ctx) => {
                reads += usize::from(ctx.people_file.is_some());
                self.ctx.as_ref() != Some(ctx)
            }
            Err(_) => false,
        };
        // A configuration that failed keeps the previous one, and its manifests, in force.
        let ctx = match &loaded {
            Ok(c) => Some(c),
            Err(_) => self.ctx.as_ref(),
        };
        let mut files = Vec::new();
        for path in ctx.map_or(&[][..], |c| &c.manifest_files[..]) {
            reads += 1;
            let Some(hash) = hash_file(path) else {
                continue; // vanished between the scan and the read: the next event rescans
            };
            // Instances or people changed: every manifest must be validated again.
            let unchanged = !fresh && self.hashes.get(path) == Some(&hash);
            let validated = (!unchanged)
                .then(|| config::load_manifest_file(path, ctx.expect("a context lists the files")));
            files.push(Scanned {
                path: path.clone(),
                hash,
                validated,
            });
        }
        Scan {
            ctx: loaded,
            files,
            reads,
        }
    }
}

impl Tree {
    pub fn new(config_path: &Path) -> Self {
        Tree {
            config_path: config_path.to_path_buf(),
            ctx: None,
            ctx_error: None,
            files: BTreeMap::new(),
            groups: BTreeMap::new(),
            duplicate_errors: Vec::new(),
        }
    }

    /// Re-read every file and fold the valid parts in. Cheap when nothing changed: unchanged
    /// manifests are recognised by their contents and not validated again.
    pub fn reload(&mut self) -> Reload {
        let scan = self.basis().scan();
        self.apply(scan)
    }

    /// What a scan of the files needs to know of the tree.
    pub fn basis(&self) -> Basis {
        Basis {
            config_path: self.config_path.clone(),
            ctx: self.ctx.clone(),
            hashes: self
                .files
                .iter()
                .map(|(p, f)| (p.clone(), f.hash))
                .collect(),
        }
    }

    /// Fold a scan in (no I/O).
    pub fn apply(&mut self, scan: Scan) -> Reload {
        let mut out = Reload::default();
        match scan.ctx {
            Ok(ctx) => {
                if self.ctx.as_ref() != Some(&ctx) {
                    out.context_changed = true;
                    self.ctx = Some(ctx);
                }
                self.ctx_error = None;
            }
            Err(d) => {
                if self.ctx_error.as_ref() != Some(&d) {
                    tracing::error!(
                        errors = d.len(),
                        "configuration invalid; the previous one stays in force\n{d}"
                    );
                }
                self.ctx_error = Some(d);
            }
        }
        let Some(ctx) = self.ctx.as_ref() else {
            return out;
        };

        let present: BTreeSet<&PathBuf> = ctx.manifest_files.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            tracing::info!(file = %p.display(), "manifest file removed: its groups are no longer managed");
            self.files.remove(&p);
        }
        for f in scan.files {
            let entry = self.files.entry(f.path.clone()).or_default();
            entry.hash = f.hash;
            match f.validated {
                None => {}
                Some(Ok(groups)) => {
                    if groups.is_empty() {
                        tracing::warn!("{}", config::no_group_warning(&f.path));
                    }
                    entry.groups = groups;
                    entry.error = None;
                }
                Some(Err(d)) => {
                    tracing::error!(file = %f.path.display(), "manifest invalid; its last valid version stays in force\n{d}");
                    entry.error = Some(d);
                }
            }
        }

        // Groups by name; a name declared in two files is an error and the first file wins.
        // Two manifests managing one provider group would undo each other: the first file wins
        // there too (check_unique_targets reports it).
        let mut groups: BTreeMap<String, DesiredGroup> = BTreeMap::new();
        let mut dups = Vec::new();
        let mut targets = BTreeSet::new();
        for (path, f) in &self.files {
            for g in &f.groups {
                if let Some(first) = groups.get(&g.name) {
                    dups.push(Diagnostic::new(
                        path,
                        (1, 1),
                        format!(
                            "group {:?} is defined twice: first at {}; this one is ignored",
                            g.name, first.source
                        ),
                    ));
                    continue;
                }
                if !targets.insert((g.provider.clone(), g.id.clone())) {
                    continue;
                }
                groups.insert(g.name.clone(), g.clone());
            }
        }
        let ordered: Vec<DesiredGroup> = self
            .files
            .values()
            .flat_map(|f| f.groups.iter().cloned())
            .collect();
        dups.extend(config::check_unique_targets(&ordered).0);
        for (name, g) in &groups {
            if self.groups.get(name) != Some(g) {
                out.changed.insert(name.clone());
            }
        }
        for name in self.groups.keys() {
            if !groups.contains_key(name) {
                out.dropped.insert(name.clone());
            }
        }
        self.groups = groups;
        self.duplicate_errors = dups;
        out
    }

    pub fn context(&self) -> Option<&Context> {
        self.ctx.as_ref()
    }

    /// Every group in force (from the last valid version of each file).
    pub fn groups(&self) -> &BTreeMap<String, DesiredGroup> {
        &self.groups
    }

    /// Every current problem in the files.
    pub fn errors(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self.ctx_error.iter().flat_map(|d| d.0.clone()).collect();
        for f in self.files.values() {
            out.extend(f.error.iter().flat_map(|d| d.0.clone()));
        }
        out.extend(self.duplicate_errors.iter().cloned());
        out
    }

    /// Manifest files in force that define no group, for /status.
    pub fn warnings(&self) -> Vec<String> {
        (self.files.iter())
            .filter(|(_, f)| f.error.is_none() && f.groups.is_empty())
            .map(|(p, _)| config::no_group_warning(p))
            .collect()
    }

    /// Errors per file, for /status and metrics.
    pub fn file_errors(&self) -> BTreeMap<PathBuf, usize> {
        let mut out = BTreeMap::new();
        for d in self.errors() {
            *out.entry(d.file.clone()).or_insert(0) += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "manifests: groups/\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n";

    fn tree() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("groups")).unwrap();
        std::fs::write(dir.path().join("rosterd.yaml"), ROOT).unwrap();
        let t = Tree::new(&dir.path().join("rosterd.yaml"));
        (dir, t)
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join("groups").join(name), text).unwrap();
    }

    #[test]
    fn a_manifest_defining_no_group_is_a_warning_not_an_error() {
        let (dir, mut t) = tree();
        write(dir.path(), "empty.yaml", "# nothing yet\n---\n");
        t.reload();
        assert!(t.errors().is_empty(), "{:?}", t.errors());
        let w = t.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("empty.yaml:1:1: warning: the file defines no group"));
    }

    #[test]
    fn a_broken_edit_keeps_the_last_valid_version_in_force() {
        let (dir, mut t) = tree();
        write(
            dir.path(),
            "g.yaml",
            "group: g\nprovider: cc\nid: g\nparticipants: [alice, bob]\n",
        );
        let r = t.reload();
        assert_eq!(r.changed, BTreeSet::from(["g".to_string()]));
        write(
            dir.path(),
            "g.yaml",
            "group: g\nprovider: cc\nid: g\nparticipants: [alice\n",
        );
        let r = t.reload();
        assert!(r.changed.is_empty() && r.dropped.is_empty(), "{r:?}");
        assert_eq!(
            t.groups()["g"].members.len(),
            2,
            "last valid version still enforced"
        );
        assert_eq!(t.errors().len(), 1);
        write(
            dir.path(),
            "g.yaml",
            "group: g\nprovider: cc\nid: g\nparticipants: [alice]\n",
        );
        let r = t.reload();
        assert_eq!(r.changed, BTreeSet::from(["g".to_string()]));
        assert!(t.errors().is_empty());
    }

    #[test]
    fn a_deleted_manifest_stops_management_and_an_unchanged_one_is_quiet() {
        let (dir, mut t) = tree();
        write(
            dir.path(),
            "g.yaml",
            "group: g\nprovider: cc\nid: g\nparticipants: [alice]\n",
        );
        t.reload();
        assert_eq!(t.reload(), Reload::default(), "nothing changed");
        std::fs::remove_file(dir.path().join("groups/g.yaml")).unwrap();
        let r = t.reload();
        assert_eq!(r.dropped, BTreeSet::from(["g".to_string()]));
        assert!(t.groups().is_empty());
    }

    #[test]
    fn a_broken_rosterd_yaml_keeps_the_previous_configuration() {
        let (dir, mut t) = tree();
        write(
            dir.path(),
            "g.yaml",
            "group: g\nprovider: cc\nid: g\nparticipants: [alice]\n",
        );
        t.reload();
        std::fs::write(
            dir.path().join("rosterd.yaml"),
            "manifests: groups/\nproviders: [\n",
        )
        .unwrap();
        let r = t.reload();
        assert!(r.changed.is_empty() && r.dropped.is_empty());
        assert!(t.groups().contains_key("g"));
        assert!(t.context().is_some());
        assert_eq!(t.errors().len(), 1);
    }
}
