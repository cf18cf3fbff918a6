//! Raw serde types of the three file kinds, exactly as written. Validation (in `mod.rs`) turns
//! them into model types once; nothing downstream sees these.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::yaml::Spanned;

/// A YAML scalar used as a provider id, kept exactly as written: `17` (Bitrix24), `007`,
/// `+491512345678` and `no` stay the text the user typed, where a typed read would make them
/// 7, a phone number without its `+`, or `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdValue(pub String);

impl IdValue {
    pub fn text(&self) -> String {
        self.0.clone()
    }
}

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id: a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdValue, E> {
                Ok(IdValue(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<IdValue, E> {
                Ok(IdValue(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdValue, E> {
                Ok(IdValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdValue, E> {
                Ok(IdValue(v.to_string()))
            }
        }
        // Asking for a string makes the YAML parser hand over the scalar's source text.
        d.deserialize_str(V)
    }
}

impl JsonSchema for IdValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A person of people.yaml, a @team, or a raw provider id",
            "type": ["string", "integer"]
        })
    }
}

/// A value of a `providers:` entry with the position of every node inside it, so a problem
/// with a nested key (`oauth.endpoint`) points at that key's own value.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(serde_json::Value),
    Seq(Vec<Spanned<Node>>),
    Map(BTreeMap<String, Spanned<Node>>),
}

impl Node {
    /// The value as plain data, for a kind's serde `Settings`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Scalar(v) => v.clone(),
            Node::Seq(items) => items.iter().map(|i| i.value.to_json()).collect(),
            Node::Map(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// The node at `path` (keys below this one, e.g. `["endpoint"]`), if there is one.
    pub fn find<'a>(this: &'a Spanned<Node>, path: &[&str]) -> Option<&'a Spanned<Node>> {
        match path.split_first() {
            None => Some(this),
            Some((key, rest)) => match &this.value {
                Node::Map(m) => Node::find(m.get(*key)?, rest),
                _ => None,
            },
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.into()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.into()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(
                    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
                ))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.into()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Scalar(v.into()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(serde_json::Value::Null))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(serde_json::Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = a.next_entry::<String, Spanned<Node>>()? {
                    m.insert(k, v);
                }
                Ok(Node::Map(m))
            }
        }
        d.deserialize_any(V)
    }
}

/// `manifests:` a folder, a file, or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "expected a folder or file path, or a list of them"
)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `max_removals`: a count, or a percentage written `"10%"`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "expected a count or a percentage such as \"10%\""
)]
pub enum RawLimit {
    Count(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawUnlisted {
    /// Remove live members the manifest does not list.
    Remove,
    /// Leave them alone (roles of listed members are still enforced).
    Keep,
}

/// Group policy defaults, each overridable per group.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[serde(default)]
    pub unlisted: Option<RawUnlisted>,
    #[serde(default)]
    #[schemars(with = "Option<RawLimit>")]
    pub max_removals: Option<Spanned<RawLimit>>,
}

/// rosterd.yaml.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoot {
    /// A folder (every *.yaml / *.yml below it), a file, or a list of them; relative to this file.
    #[schemars(with = "OneOrMany")]
    pub manifests: Spanned<OneOrMany>,
    /// people.yaml, relative to this file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub people: Option<Spanned<String>>,
    /// Daemon: full reconcile period (humantime, e.g. `5m`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub resync: Option<Spanned<String>>,
    /// Daemon: listen address of /healthz /readyz /metrics /status.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    /// One JSON line per write call and per member outcome.
    #[serde(default)]
    pub audit_log: Option<String>,
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Provider instances by name. Keys per kind are documented in the README.
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub providers: BTreeMap<String, Spanned<BTreeMap<String, Spanned<Node>>>>,
}

/// people.yaml.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPeople {
    /// person -> { provider instance name or kind: id }
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, BTreeMap<String, IdValue>>")]
    pub people: BTreeMap<String, Spanned<BTreeMap<String, Spanned<IdValue>>>>,
    /// team -> [person | "@team" | raw id]
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<IdValue>>")]
    pub teams: BTreeMap<String, Spanned<Vec<Spanned<IdValue>>>>,
}

/// A timed or indefinite mute.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMute {
    #[schemars(with = "IdValue")]
    pub member: Spanned<IdValue>,
    /// RFC 3339; omitted = muted until the entry is removed.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub until: Option<Spanned<String>>,
}

type Members = Option<Spanned<Vec<Spanned<IdValue>>>>;

/// One group manifest (one YAML document).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// rosterd's name for the group; unique across all manifests.
    #[schemars(with = "String")]
    pub group: Spanned<String>,
    /// A provider instance from rosterd.yaml.
    #[schemars(with = "String")]
    pub provider: Spanned<String>,
    /// The provider's id of the group.
    #[schemars(with = "IdValue")]
    pub id: Spanned<IdValue>,
    #[serde(default)]
    #[schemars(with = "Option<IdValue>")]
    pub owner: Option<Spanned<IdValue>>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<IdValue>>")]
    pub admins: Members,
    #[serde(default)]
    #[schemars(with = "Option<Vec<IdValue>>")]
    pub moderators: Members,
    #[serde(default)]
    #[schemars(with = "Option<Vec<IdValue>>")]
    pub participants: Members,
    /// Present => authoritative; absent => bans are not managed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<IdValue>>")]
    pub bans: Members,
    /// Present => authoritative; absent => mutes are not managed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawMute>>")]
    pub mutes: Option<Spanned<Vec<RawMute>>>,
    #[serde(default)]
    pub unlisted: Option<RawUnlisted>,
    #[serde(default)]
    #[schemars(with = "Option<RawLimit>")]
    pub max_removals: Option<Spanned<RawLimit>>,
}
