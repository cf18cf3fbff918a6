//! A reviewed plan (`plan --out FILE`) read back by `apply --plan FILE`: per group, the
//! checksums of what it was computed from and its operations. A group is applied only when a
//! fresh read gives the same checksums and the same operations; any other group is refused,
//! naming what moved, while the rest are applied.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::GroupPlan;
use super::checksum::Checksum;
use super::render::JSON_VERSION;
use crate::model::DesiredGroup;

/// The groups of a reviewed plan, by group name.
#[derive(Debug, Clone)]
pub struct SavedPlan {
    pub groups: BTreeMap<String, SavedGroup>,
}

/// One group of a reviewed plan.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedGroup {
    pub group: String,
    pub provider: String,
    pub id: String,
    pub checksum: Checksum,
    pub operations: Vec<Value>,
}

#[derive(Deserialize)]
struct Doc {
    version: u32,
    tree: Option<String>,
    groups: Vec<SavedGroup>,
}

impl SavedPlan {
    /// Parse a plan document written by `plan --out` for the tree whose fingerprint is `tree`.
    /// `Err` for a malformed document, another version, or a plan of another tree.
    pub fn parse(text: &str, tree: &str) -> Result<SavedPlan, String> {
        let doc: Doc = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a rosterd plan document (line {}, column {}): {e}",
                e.line(),
                e.column()
            )
        })?;
        if doc.version != JSON_VERSION {
            return Err(format!(
                "plan document version {} (this rosterd reads version {JSON_VERSION}); plan again",
                doc.version
            ));
        }
        match doc.tree.as_deref() {
            None => {
                return Err(
                    "the plan has no `tree`: write it with `rosterd plan --out FILE`".to_string(),
                );
            }
            Some(t) if t != tree => {
                return Err(format!(
                    "the plan was made for another tree (its provider instances differ: plan {t}, this tree {tree})"
                ));
            }
            Some(_) => {}
        }
        let mut groups = BTreeMap::new();
        for g in doc.groups {
            if groups.contains_key(&g.group) {
                return Err(format!("group {} is in the plan twice", g.group));
            }
            groups.insert(g.group.clone(), g);
        }
        Ok(SavedPlan { groups })
    }

    /// Whether `plan`, made from a fresh read of `desired`, is the reviewed plan of its group.
    /// `Err` names the group and what changed since.
    pub fn check(&self, desired: &DesiredGroup, plan: &GroupPlan) -> Result<(), String> {
        let name = &desired.name;
        let Some(saved) = self.groups.get(name) else {
            return Err(format!(
                "group {name} is not in the reviewed plan; nothing applied"
            ));
        };
        let refused = |what: String| {
            Err(format!(
                "group {name} changed since the reviewed plan (checksum {}): {what}; nothing applied to it, plan and review again",
                saved.checksum.group
            ))
        };
        if saved.provider != desired.provider || saved.id != desired.id.as_str() {
            return refused(format!(
                "its manifest now manages {} group {}, the plan was for {} group {}",
                desired.provider, desired.id, saved.provider, saved.id
            ));
        }
        let Some(now) = &plan.checksum else {
            return refused("it has no checksum now".to_string());
        };
        let files = now.desired != saved.checksum.desired;
        let live = now.live != saved.checksum.live;
        let ops_now: Vec<Value> = plan
            .ops
            .iter()
            .map(|o| serde_json::to_value(o).expect("JSON"))
            .collect();
        let ops_then: Vec<Value> = saved.operations.iter().map(without_name).collect();
        if files || live {
            let what = match (files, live) {
                (true, true) => "its files (manifest or people.yaml) and its live roster changed",
                (true, false) => "its files (manifest or people.yaml) changed",
                _ => "its live roster changed",
            };
            return refused(format!("{what}{}", moved(plan, &ops_then, &ops_now)));
        }
        if ops_now != ops_then {
            return refused(format!(
                "the same inputs now plan other operations (a mute ended meanwhile?){}",
                moved(plan, &ops_then, &ops_now)
            ));
        }
        Ok(())
    }
}

fn without_name(op: &Value) -> Value {
    let mut op = op.clone();
    if let Some(m) = op.as_object_mut() {
        m.remove("name");
    }
    op
}

/// The members whose planned operations differ between the reviewed plan and now.
fn moved(plan: &GroupPlan, then: &[Value], now: &[Value]) -> String {
    let member = |v: &Value| v["member"].as_str().unwrap_or("").to_string();
    let mut members: Vec<String> = then
        .iter()
        .filter(|o| !now.contains(o))
        .chain(now.iter().filter(|o| !then.contains(o)))
        .map(member)
        .collect();
    members.sort();
    members.dedup();
    if members.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = members
        .iter()
        .map(|m| plan.who(&crate::model::MemberId::new(m.clone())))
        .collect();
    format!("; planned operations now differ for {}", shown.join(", "))
}
