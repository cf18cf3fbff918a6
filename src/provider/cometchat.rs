//! CometChat (Chat REST API v3). See `shared/providers/cometchat.md`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::secret::SecretRef;

/// CometChat's own keys in a `providers:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The app id (selects the host `{app_id}.api-{region}.cometchat.io`).
    pub app_id: String,
    /// `us`, `eu` or `in`.
    pub region: String,
    /// A REST API key with `fullAccess` scope.
    pub api_key: SecretRef,
}
