//! WhatsApp through a WAHA server. See `shared/providers/waha.md`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::secret::SecretRef;

/// WAHA's own keys in a `providers:` entry (`base_url` is a common key and required here).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The WAHA session name (`default` on WAHA Core).
    #[serde(default = "default_session")]
    pub session: String,
    pub api_key: SecretRef,
}

fn default_session() -> String {
    "default".to_string()
}
