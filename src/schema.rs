//! JSON Schema (draft-07) of rosterd.yaml, people.yaml and group manifests, for editors' YAML
//! language servers (`# yaml-language-server: $schema=...`).

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::config::raw::{RawGroup, RawPeople, RawRoot};
use crate::model::Kind;

/// The three file kinds a schema is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileKind {
    /// rosterd.yaml
    Config,
    /// people.yaml
    People,
    /// A group manifest.
    Manifest,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Config, FileKind::People, FileKind::Manifest];

    /// The file name `rosterd schema --out DIR` writes.
    pub fn file_name(self) -> &'static str {
        match self {
            FileKind::Config => "rosterd.schema.json",
            FileKind::People => "people.schema.json",
            FileKind::Manifest => "manifest.schema.json",
        }
    }
}

/// One self-contained draft-07 schema: every `$ref` points into its own `definitions`.
pub fn schema_for(kind: FileKind) -> Value {
    let generator = || SchemaSettings::draft07().into_generator();
    match kind {
        FileKind::Config => config_schema(),
        FileKind::People => generator().into_root_schema_for::<RawPeople>().to_value(),
        FileKind::Manifest => generator().into_root_schema_for::<RawGroup>().to_value(),
    }
}

/// `{"rosterd.yaml": schema, "people.yaml": schema, "manifest": schema}`.
pub fn schema() -> Value {
    json!({
        "rosterd.yaml": schema_for(FileKind::Config),
        "people.yaml": schema_for(FileKind::People),
        "manifest": schema_for(FileKind::Manifest),
    })
}

fn config_schema() -> Value {
    let mut root = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawRoot>()
        .to_value();
    // Provider entries: `kind` selects the kind's own keys; the common keys are shared.
    let common = json!({
        "base_url": {"type": "string", "description": "Replaces the provider's public address (proxies, the sandbox, tests)"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "Members per write call, capped at the provider's maximum for each kind of call"},
        "concurrency": {"type": "integer", "minimum": 1, "description": "Groups of the instance reconciled at the same time (default 4)"},
        "interval": {"type": "string", "description": "Pause between write calls (humantime, e.g. 200ms)"},
        "rate": {"type": ["string", "number"], "description": "Cap on requests per second, reads and writes: 10/s, 600/m, 1/10s"},
        "timeout": {"type": "string", "description": "Per request (humantime; default 15s)"},
        "ca_file": {"type": "string", "description": "PEM bundle of private certificate authorities trusted besides the system's (relative to rosterd.yaml)"},
        "proxy": {"type": "string", "description": "http(s) proxy for every request of the instance; else HTTPS_PROXY / NO_PROXY apply"},
        "protected": {"type": "array", "items": {"type": ["string", "integer"]}, "description": "Ids never removed, demoted, banned or muted"},
    });
    let mut definitions = root["definitions"].take();
    if !definitions.is_object() {
        definitions = json!({});
    }
    let variants: Vec<Value> = Kind::ALL
        .iter()
        .map(|&k| {
            let mut own = (k.spec().schema)().to_value();
            // A kind's definitions move to the root, where its `$ref`s point; a name another
            // kind already uses for something else is renamed for this kind.
            if let Some(defs) = own["definitions"].take().as_object() {
                for (name, def) in defs {
                    match definitions.get(name) {
                        Some(d) if d != def => {
                            let renamed = format!("{}{name}", k.as_str());
                            rename_refs(&mut own, name, &renamed);
                            definitions[renamed] = def.clone();
                        }
                        _ => definitions[name] = def.clone(),
                    }
                }
            }
            let mut props = own["properties"].take();
            for (key, v) in common.as_object().expect("an object") {
                props[key] = v.clone();
            }
            props["kind"] = json!({"const": k.as_str(), "description": "The provider kind"});
            let mut required = own["required"].take();
            if !required.is_array() {
                required = json!([]);
            }
            required
                .as_array_mut()
                .expect("an array")
                .push(json!("kind"));
            json!({
                "type": "object",
                "title": format!("a {} instance", k.as_str()),
                "properties": props,
                "required": required,
                "additionalProperties": false,
            })
        })
        .collect();
    root["definitions"] = definitions;
    root["properties"]["providers"] = json!({
        "type": "object",
        "description": "Provider instances by name; groups name them in `provider:`",
        "additionalProperties": {"oneOf": variants},
    });
    root
}

/// Point every `$ref` to `#/definitions/{from}` at `#/definitions/{to}`.
fn rename_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if k == "$ref" && x.as_str() == Some(&format!("#/definitions/{from}")) {
                    *x = json!(format!("#/definitions/{to}"));
                } else {
                    rename_refs(x, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| rename_refs(x, from, to)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_draft07_and_describe_every_file_kind() {
        let s = schema();
        for key in ["rosterd.yaml", "people.yaml", "manifest"] {
            assert_eq!(
                s[key]["$schema"], "http://json-schema.org/draft-07/schema#",
                "{key}"
            );
        }
        let manifest = &s["manifest"]["properties"];
        for field in [
            "group",
            "provider",
            "id",
            "admins",
            "moderators",
            "participants",
            "bans",
            "mutes",
        ] {
            assert!(manifest.get(field).is_some(), "manifest lacks {field}");
        }
        let variants =
            s["rosterd.yaml"]["properties"]["providers"]["additionalProperties"]["oneOf"]
                .as_array()
                .expect("one schema per provider kind");
        assert_eq!(variants.len(), Kind::ALL.len());
        assert!(variants[0]["properties"]["api_key"].is_object());
        assert!(s["people.yaml"]["properties"]["teams"].is_object());
    }

    /// Every `$ref` of a schema, as written.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_string()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves_inside_its_own_schema() {
        for kind in FileKind::ALL {
            let s = schema_for(kind);
            let mut found = Vec::new();
            refs(&s, &mut found);
            for r in found {
                let name = r
                    .strip_prefix("#/definitions/")
                    .unwrap_or_else(|| panic!("{kind:?}: {r} is not a local definition"));
                assert!(
                    s["definitions"].get(name).is_some(),
                    "{kind:?}: {r} dangles"
                );
            }
        }
    }

    #[test]
    fn every_key_of_every_provider_kind_is_described() {
        let s = schema_for(FileKind::Config);
        for v in s["properties"]["providers"]["additionalProperties"]["oneOf"]
            .as_array()
            .unwrap()
        {
            for (key, p) in v["properties"].as_object().unwrap() {
                assert!(
                    p["description"].is_string(),
                    "{} key {key} has no description",
                    v["title"]
                );
            }
        }
    }
}
