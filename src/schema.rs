//! JSON Schema (draft-07) of rosterd.yaml, people.yaml and group manifests, for editors' YAML
//! language servers (`# yaml-language-server: $schema=...`).

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::config::raw::{RawGroup, RawPeople, RawRoot};
use crate::model::Kind;

/// `{"rosterd.yaml": schema, "people.yaml": schema, "manifest": schema}`.
pub fn schema() -> Value {
    let generator = || SchemaSettings::draft07().into_generator();
    let mut root = generator().into_root_schema_for::<RawRoot>().to_value();
    // Provider entries: `kind` selects the kind's own keys; the common keys are shared.
    let common = json!({
        "base_url": {"type": "string", "description": "Replaces the provider's public address"},
        "batch_size": {"type": "integer", "minimum": 1},
        "concurrency": {"type": "integer", "minimum": 1, "description": "Groups reconciled at the same time (default 4)"},
        "interval": {"type": "string", "description": "Pause between write calls (humantime)"},
        "rate": {"type": ["string", "number"], "description": "Requests per time, e.g. 10/s"},
        "timeout": {"type": "string", "description": "Per request (humantime)"},
        "protected": {"type": "array", "items": {"type": ["string", "integer"]}},
    });
    let variants: Vec<Value> = Kind::ALL
        .iter()
        .map(|&k| {
            let mut own = (k.spec().schema)().to_value();
            let mut props = own["properties"].take();
            for (key, v) in common.as_object().expect("an object") {
                props[key] = v.clone();
            }
            props["kind"] = json!({"const": k.as_str()});
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
                "properties": props,
                "required": required,
                "additionalProperties": false,
                "definitions": own["definitions"].take(),
            })
        })
        .collect();
    root["properties"]["providers"] = json!({
        "type": "object",
        "additionalProperties": {"oneOf": variants},
    });
    json!({
        "rosterd.yaml": root,
        "people.yaml": generator().into_root_schema_for::<RawPeople>().to_value(),
        "manifest": generator().into_root_schema_for::<RawGroup>().to_value(),
    })
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
}
