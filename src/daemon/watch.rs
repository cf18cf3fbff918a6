//! Watching the files. Directories are watched, never single files: an editor's atomic save
//! replaces the file (a file watch would go blind), and a Kubernetes ConfigMap update swaps a
//! `..data` symlink without ever naming the file. Only events that can change contents count —
//! create, write, remove, rename (symlink swaps are renames) — so the daemon's own reads of its
//! files (open, read, close events) never trigger another rescan. The state layer then skips
//! files whose contents did not change.
//!
//! The roots follow the configuration: [`Watch::follow`] is called after every reload, adds the
//! folders a new `manifests:` names and drops the ones it no longer does. A root below another
//! is watched once, by the outer one. A root reached through a symlinked folder (git-sync's
//! `repo -> .worktrees/<sha>`) is re-watched when the link points elsewhere, and the folder
//! holding the link is watched too, so the swap itself is an event.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::config::Context;

/// Events that never matter: version control internals, editors' swap and backup files.
fn ignored(path: &Path) -> bool {
    if path.components().any(|c| c.as_os_str() == ".git") {
        return true;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with(".#")
        || name.ends_with(".bak")
}

/// Whether an event can mean new contents. Opens, reads and closes after reading (the daemon's
/// own rescans raise them) and metadata changes (permissions, access times) cannot.
fn changes_contents(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        // Create, Modify(Data | Name | Any | Other), Remove, and Any/Other (a rescan request
        // from the watcher itself, or a kind it could not tell) all count.
        _ => true,
    }
}

/// A watched directory, and whether recursively.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Root {
    path: PathBuf,
    recursive: bool,
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    };
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Where a folder really is (symlinks and `..` resolved), as the kernel watches it.
fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p))
}

/// Directories to watch: the folder of rosterd.yaml (which holds people.yaml in the usual
/// layout), the folder of people.yaml, every `manifests:` folder and every manifest file's
/// folder, recursively, where they really are, keeping only the outermost; plus,
/// non-recursively, the folder holding any symlinked folder on the way to them.
fn roots(config: &Path, ctx: &Context) -> BTreeSet<Root> {
    let mut named: Vec<PathBuf> = vec![absolute(config.parent().unwrap_or(Path::new(".")))];
    named.extend(ctx.manifest_dirs.iter().map(|d| absolute(d)));
    for f in ctx.manifest_files.iter().chain(ctx.people_file.iter()) {
        if let Some(dir) = f.parent() {
            named.push(absolute(dir));
        }
    }
    let mut dirs: BTreeSet<PathBuf> = named.iter().map(|d| real(d)).collect();
    // Keep only the outermost: a recursive watch covers what is below it.
    let all: Vec<PathBuf> = dirs.iter().cloned().collect();
    dirs.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));

    let mut out: BTreeSet<Root> = dirs
        .iter()
        .map(|d| Root {
            path: d.clone(),
            recursive: true,
        })
        .collect();
    for d in &named {
        for link in d.ancestors().filter(|a| a.is_symlink()) {
            let Some(parent) = link.parent().map(real) else {
                continue;
            };
            if !dirs.iter().any(|q| parent.starts_with(q)) {
                out.insert(Root {
                    path: parent,
                    recursive: false,
                });
            }
        }
    }
    out
}

/// The watcher and the roots it watches.
pub struct Watch {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    roots: BTreeMap<PathBuf, Root>,
}

impl Watch {
    /// Start watching; `on_change` is called (from the watcher's thread) after each debounced
    /// burst of events that can change contents, and after a watch error, so that a lost event
    /// still ends in a rescan. `None` when no watcher can be started: the periodic rescan still
    /// covers changes.
    pub fn start(
        config: &Path,
        ctx: &Context,
        debounce: Duration,
        on_change: impl Fn() + Send + 'static,
    ) -> Option<Watch> {
        let handler = move |res: DebounceEventResult| match res {
            Ok(events) => {
                let relevant = events
                    .iter()
                    .any(|e| changes_contents(&e.kind) && e.paths.iter().any(|p| !ignored(p)));
                if relevant {
                    on_change();
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "file watch error; rescanning");
                }
                on_change();
            }
        };
        let debouncer = match new_debouncer(debounce, None, handler) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the files; falling back to periodic rescans");
                return None;
            }
        };
        let mut w = Watch {
            debouncer,
            roots: BTreeMap::new(),
        };
        w.follow(config, ctx);
        Some(w)
    }

    /// Watch what the configuration in force names, and stop watching what it no longer does.
    pub fn follow(&mut self, config: &Path, ctx: &Context) {
        let want: BTreeMap<PathBuf, Root> = roots(config, ctx)
            .into_iter()
            .map(|r| (r.path.clone(), r))
            .collect();
        let stale: Vec<PathBuf> = self
            .roots
            .iter()
            .filter(|(p, r)| want.get(*p) != Some(r))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            self.roots.remove(&p);
            let _ = self.debouncer.unwatch(&p);
        }
        for (p, r) in want {
            if self.roots.contains_key(&p) {
                continue;
            }
            let mode = if r.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.debouncer.watch(&p, mode) {
                Ok(()) => {
                    tracing::debug!(dir = %p.display(), recursive = r.recursive, "watching");
                    self.roots.insert(p, r);
                }
                Err(e) => {
                    tracing::warn!(dir = %p.display(), error = %e, "cannot watch; falling back to periodic rescans")
                }
            }
        }
    }

    /// The directories watched, and whether recursively.
    pub fn watched(&self) -> Vec<(PathBuf, bool)> {
        self.roots
            .values()
            .map(|r| (r.path.clone(), r.recursive))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn editor_and_git_noise_is_ignored() {
        assert!(ignored(Path::new("/repo/.git/index.lock")));
        assert!(ignored(Path::new("/repo/groups/a.yaml.swp")));
        assert!(ignored(Path::new("/repo/groups/a.yaml~")));
        assert!(!ignored(Path::new("/repo/groups/a.yaml")));
        assert!(
            !ignored(Path::new("/repo/..data")),
            "ConfigMap swaps must be seen"
        );
    }

    #[test]
    fn only_events_that_can_change_contents_count() {
        use AccessKind as A;
        for quiet in [
            EventKind::Access(A::Open(AccessMode::Any)),
            EventKind::Access(A::Read),
            EventKind::Access(A::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            assert!(!changes_contents(&quiet), "{quiet:?}");
        }
        for loud in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Access(A::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes_contents(&loud), "{loud:?}");
        }
    }

    fn ctx_of(config: &Path) -> Context {
        crate::config::load_context(config).expect("valid")
    }

    const ROOT: &str = "manifests: groups/\npeople: people.yaml\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n";

    #[test]
    fn nested_roots_are_watched_once_even_from_a_relative_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("groups/sub")).unwrap();
        std::fs::write(dir.path().join("groups/sub/a.yaml"), "").unwrap();
        std::fs::write(dir.path().join("rosterd.yaml"), ROOT).unwrap();
        std::fs::write(dir.path().join("people.yaml"), "people: {}\n").unwrap();
        let cfg = dir.path().join("rosterd.yaml");
        let r = roots(&cfg, &ctx_of(&cfg));
        let paths: Vec<&Path> = r.iter().map(|r| r.path.as_path()).collect();
        assert_eq!(paths, [absolute(dir.path())], "{r:?}");
        // "./rosterd.yaml" and "groups/" relative to it: still one root.
        let here = std::env::current_dir().unwrap();
        let rel_cfg = pathdiff(&cfg, &here);
        let r = roots(&rel_cfg, &ctx_of(&rel_cfg));
        assert_eq!(r.len(), 1, "{r:?}");
    }

    /// `cfg` relative to `base` (both absolute), with `..` as needed.
    fn pathdiff(cfg: &Path, base: &Path) -> PathBuf {
        let common = cfg
            .components()
            .zip(base.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut out = PathBuf::new();
        for _ in base.components().skip(common) {
            out.push("..");
        }
        for c in cfg.components().skip(common) {
            out.push(c);
        }
        out
    }

    #[test]
    fn roots_follow_the_configuration_and_a_swapped_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        // git-sync: /base/repo -> /base/.worktrees/v1
        for v in ["v1", "v2"] {
            let wt = base.join(".worktrees").join(v);
            std::fs::create_dir_all(wt.join("groups")).unwrap();
            std::fs::write(wt.join("rosterd.yaml"), ROOT).unwrap();
            std::fs::write(wt.join("people.yaml"), "people: {}\n").unwrap();
        }
        std::fs::create_dir_all(base.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(".worktrees/v1", base.join("repo")).unwrap();
        let cfg = base.join("repo/rosterd.yaml");
        let mut w = Watch::start(&cfg, &ctx_of(&cfg), Duration::from_secs(1), || {}).unwrap();
        assert_eq!(
            w.watched(),
            [(base.clone(), false), (base.join(".worktrees/v1"), true)],
            "the link's folder too, so the swap is seen"
        );

        // The link moves: the root is watched again, at its new target.
        std::os::unix::fs::symlink(".worktrees/v2", base.join("repo.tmp")).unwrap();
        std::fs::rename(base.join("repo.tmp"), base.join("repo")).unwrap();
        w.follow(&cfg, &ctx_of(&cfg));
        assert_eq!(
            w.watched(),
            [(base.clone(), false), (base.join(".worktrees/v2"), true)]
        );

        // `manifests:` gains a folder outside the repo: it is watched from the next reload on.
        let v2 = base.join(".worktrees/v2");
        std::fs::write(
            v2.join("rosterd.yaml"),
            ROOT.replace(
                "manifests: groups/",
                "manifests: [groups/, ../../elsewhere/]",
            ),
        )
        .unwrap();
        w.follow(&cfg, &ctx_of(&cfg));
        let watched: Vec<PathBuf> = w.watched().into_iter().map(|(p, _)| p).collect();
        assert!(watched.contains(&base.join("elsewhere")), "{watched:?}");
        // ... and dropped when it no longer names it.
        std::fs::write(v2.join("rosterd.yaml"), ROOT).unwrap();
        w.follow(&cfg, &ctx_of(&cfg));
        assert_eq!(w.watched().len(), 2, "{:?}", w.watched());
    }
}
