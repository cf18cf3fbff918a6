//! Watching the files. Directories are watched, never single files: an editor's atomic save
//! replaces the file (a file watch would go blind), and a Kubernetes ConfigMap update swaps a
//! `..data` symlink without ever naming the file. So any event below a watched directory means
//! "rescan and compare contents" — the state layer skips files whose contents did not change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
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

/// Directories to watch: the folder of rosterd.yaml (which holds people.yaml in the usual
/// layout) and every manifest location, recursively.
fn roots(config: &Path, ctx: &Context) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let base = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    out.insert(if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    });
    for f in ctx.manifest_files.iter().chain(ctx.people_file.iter()) {
        if let Some(dir) = f.parent() {
            out.insert(dir.to_path_buf());
        }
    }
    // Keep only the outermost: a recursive watch covers what is below it.
    let all: Vec<PathBuf> = out.iter().cloned().collect();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    out
}

/// Start watching; `on_change` is called (from the watcher's thread) after each debounced burst
/// of relevant events, and after a watch error, so that a lost event still ends in a rescan.
/// Returns `None` when no watcher can be started: the periodic rescan still covers changes.
pub fn start(
    config: &Path,
    ctx: &Context,
    debounce: Duration,
    on_change: impl Fn() + Send + 'static,
) -> Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            if events.iter().any(|e| e.paths.iter().any(|p| !ignored(p))) {
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
    let mut debouncer = match new_debouncer(debounce, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the files; falling back to periodic rescans");
            return None;
        }
    };
    for dir in roots(config, ctx) {
        if let Err(e) = debouncer.watch(&dir, RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; falling back to periodic rescans");
        }
    }
    Some(debouncer)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
