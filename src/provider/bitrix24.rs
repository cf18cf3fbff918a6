//! Bitrix24 chats (im.chat.* through `batch`). See `shared/providers/bitrix24.md`.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::secret::SecretRef;

/// Bitrix24's own keys in a `providers:` entry: a webhook URL or OAuth tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `https://portal/rest/<user>/<token>/` — a secret: the token is in the path.
    #[serde(default)]
    pub webhook_url: Option<SecretRef>,
    #[serde(default)]
    pub oauth: Option<OAuth>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// `https://portal/rest/`
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// A file holding `{access_token, refresh_token}`; rosterd rewrites it after a refresh.
    pub token_file: PathBuf,
}
