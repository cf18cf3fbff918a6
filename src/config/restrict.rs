//! `restrictions:` of rosterd.yaml (SPEC §7): which provider instances and group ids the
//! manifests under a path may manage, so one repository can hold many teams' folders (each with
//! its CODEOWNERS) without one team's file taking over another team's groups.
//!
//! The first rule whose `path` matches a manifest decides; a manifest no rule matches manages
//! nothing; no `restrictions:` at all means unrestricted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use super::raw::RawRestriction;
use super::yaml::{Spanned, pos};
use super::{Diagnostic, Diagnostics};
use crate::model::GroupId;
use crate::provider::Instance;

/// The compiled rules, in file order.
#[derive(Debug, Clone)]
pub struct Restrictions {
    /// rosterd.yaml, for the rule positions in messages.
    file: PathBuf,
    /// Where `restrictions:` is written.
    at: (u64, u64),
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    at: (u64, u64),
    path: String,
    path_glob: GlobMatcher,
    /// `None`: any instance.
    providers: Option<Vec<String>>,
    /// `None`: any group id.
    groups: Option<(Vec<String>, GlobSet)>,
}

// Compiled globs have no equality; the rules as written do.
impl PartialEq for Restrictions {
    fn eq(&self, o: &Self) -> bool {
        self.file == o.file
            && self.at == o.at
            && self.rules.len() == o.rules.len()
            && self.rules.iter().zip(&o.rules).all(|(a, b)| {
                a.at == b.at
                    && a.path == b.path
                    && a.providers == b.providers
                    && a.groups.as_ref().map(|g| &g.0) == b.groups.as_ref().map(|g| &g.0)
            })
    }
}

impl Restrictions {
    /// Compile the rules; bad globs and unknown instance names are reported at their position.
    pub fn build(
        file: &Path,
        raw: &Spanned<Vec<Spanned<RawRestriction>>>,
        instances: &BTreeMap<String, Instance>,
        broken: &std::collections::BTreeSet<String>,
        diags: &mut Diagnostics,
    ) -> Restrictions {
        let mut rules = Vec::new();
        for (i, r) in raw.value.iter().enumerate() {
            let n = i + 1;
            let path_glob = match GlobBuilder::new(r.value.path.value.trim())
                .literal_separator(true)
                .build()
            {
                Ok(g) => g.compile_matcher(),
                Err(e) => {
                    diags.push(Diagnostic::new(
                        file,
                        pos(&r.value.path),
                        format!("restrictions rule {n}: path: expected a glob such as groups/team-a/**: {e}"),
                    ));
                    continue;
                }
            };
            let providers = r.value.providers.as_ref().map(|ps| {
                for p in ps {
                    if !instances.contains_key(&p.value) && !broken.contains(&p.value) {
                        diags.push(Diagnostic::new(
                            file,
                            pos(p),
                            format!(
                                "restrictions rule {n}: unknown provider instance {:?}",
                                p.value
                            ),
                        ));
                    }
                }
                ps.iter().map(|p| p.value.clone()).collect::<Vec<_>>()
            });
            let groups = match &r.value.groups {
                None => None,
                Some(gs) => {
                    let mut set = GlobSetBuilder::new();
                    let mut ok = true;
                    for g in gs {
                        // Group ids have no folders: `*` spans every character.
                        match GlobBuilder::new(g.value.trim()).build() {
                            Ok(glob) => {
                                set.add(glob);
                            }
                            Err(e) => {
                                ok = false;
                                diags.push(Diagnostic::new(
                                    file,
                                    pos(g),
                                    format!("restrictions rule {n}: groups: expected a glob over group ids such as \"a-*\": {e}"),
                                ));
                            }
                        }
                    }
                    match set.build() {
                        Ok(set) if ok => Some((gs.iter().map(|g| g.value.clone()).collect(), set)),
                        _ => continue,
                    }
                }
            };
            rules.push(Rule {
                at: pos(r),
                path: r.value.path.value.trim().to_string(),
                path_glob,
                providers,
                groups,
            });
        }
        Restrictions {
            file: file.to_path_buf(),
            at: pos(raw),
            rules,
        }
    }

    /// May the manifest `manifest` (under `root`, rosterd.yaml's folder) manage group `id` of
    /// instance `provider`? `Err` says why not, naming the rule.
    pub fn check(
        &self,
        root: &Path,
        manifest: &Path,
        provider: &str,
        id: &GroupId,
    ) -> Result<(), String> {
        let rel = manifest.strip_prefix(root).unwrap_or(manifest);
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        let Some((n, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.path_glob.is_match(&rel_text))
        else {
            return Err(format!(
                "{rel_text} matches no rule of restrictions ({}:{}:{}), so it may manage no group",
                self.file.display(),
                self.at.0,
                self.at.1
            ));
        };
        let provider_ok = rule
            .providers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == provider));
        let group_ok = rule
            .groups
            .as_ref()
            .is_none_or(|(_, set)| set.is_match(id.as_str()));
        if provider_ok && group_ok {
            return Ok(());
        }
        let providers = rule
            .providers
            .as_ref()
            .map_or("any provider".to_string(), |ps| {
                if ps.is_empty() {
                    "no provider".to_string()
                } else {
                    format!("providers [{}]", ps.join(", "))
                }
            });
        let groups = rule
            .groups
            .as_ref()
            .map_or("any group".to_string(), |(gs, _)| {
                format!("groups [{}]", gs.join(", "))
            });
        Err(format!(
            "{rel_text} may not manage {provider} group {id}: restrictions rule {} (path {}, {}:{}:{}) allows {providers}, {groups}",
            n + 1,
            rule.path,
            self.file.display(),
            rule.at.0,
            rule.at.1
        ))
    }
}
