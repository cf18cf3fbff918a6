//! Tencent Cloud Chat (IM server REST API v4). See `shared/providers/tencent.md`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::secret::SecretRef;

/// Tencent's own keys in a `providers:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub sdk_app_id: u64,
    /// The app admin account the calls act as.
    pub identifier: String,
    pub secret_key: SecretRef,
    /// A regional domain name (`singapore`, `guangzhou`, ...); or set `base_url`.
    #[serde(default)]
    pub region: Option<String>,
}
