//! OAuth for Bitrix24 applications: the tokens read from `token_file`, and their refresh when
//! the portal rejects the access token — once per rejection across every task of the instance
//! (the HTTP layer's `Renew`), written back to the file before the new token is used.

use super::*;

pub(super) struct OAuthAuth {
    pub(super) instance: String,
    /// The REST endpoint, ending in `/`.
    pub(super) rest: String,
    pub(super) token_url: String,
    pub(super) client_id: String,
    pub(super) client_secret: Secret,
    pub(super) token_file: PathBuf,
    pub(super) tokens: Mutex<Tokens>,
    /// Held by the refresh in flight, so concurrent callers refresh once between them.
    pub(super) refreshing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub(super) struct Tokens {
    pub(super) access: Secret,
    pub(super) refresh: Secret,
    /// Bumped on every refresh, so concurrent callers refresh once between them.
    pub(super) generation: u64,
}

#[async_trait]
impl Renew for OAuthAuth {
    /// Refresh the OAuth tokens once (unless another task already did since `seen`), and
    /// persist them before they are used.
    async fn renew(&self, ctx: &Ctx, http: &HttpClient, seen: u64) -> Result<(), ProviderError> {
        let o = self;
        let _one = o.refreshing.lock().await;
        let old = o.tokens.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if old.generation != seen {
            return Ok(());
        }
        let mut url = reqwest::Url::parse(&o.token_url).map_err(|_| {
            ProviderError::fatal(format!(
                "provider {}: the OAuth server address is not a URL",
                self.instance
            ))
        })?;
        url.query_pairs_mut()
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &o.client_id)
            .append_pair("client_secret", o.client_secret.expose())
            .append_pair("refresh_token", old.refresh.expose());
        let call = Call {
            method: Method::GET,
            url: url.into(),
            headers: headers(),
            body: None,
            // A refresh spends the old refresh token: repeating one whose answer was lost
            // would fail `invalid_grant`, so it is never repeated blindly.
            write: true,
            idempotent: false,
            label: "refresh OAuth token",
            credentials: seen,
        };
        let instance = self.instance.clone();
        let fresh: Value = http
            .call(ctx, call, |r| {
                let v: Option<Value> = serde_json::from_slice(&r.body).ok();
                let ok = (200..300).contains(&r.status)
                    && v.as_ref().is_some_and(|v| v.get("error").is_none());
                if ok {
                    return Ok(v.expect("checked"));
                }
                let code = v
                    .as_ref()
                    .and_then(|v| v.get("error"))
                    .and_then(Value::as_str)
                    .map(String::from);
                let class = if code.is_none() && r.status >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Fatal
                };
                Err(ProviderError {
                    class,
                    message: format!(
                        "provider {instance}: refreshing the OAuth token failed: HTTP {} {}",
                        r.status,
                        code.as_deref().unwrap_or("")
                    ),
                    code,
                    retry_after: None,
                })
            })
            .await?;
        let access = fresh.get("access_token").and_then(Value::as_str);
        let refresh = fresh.get("refresh_token").and_then(Value::as_str);
        let (Some(access), Some(refresh)) = (access, refresh) else {
            return Err(ProviderError::fatal(format!(
                "provider {}: the OAuth server answered without access_token and refresh_token",
                self.instance
            )));
        };
        // The old refresh token is spent now: persist first, so a crash right after this
        // never leaves the file holding a dead token while the new one lived only in memory.
        write_tokens(&o.token_file, &fresh).map_err(|e| {
            ProviderError::fatal(format!(
                "provider {}: cannot write the refreshed tokens to {}: {e}",
                self.instance,
                o.token_file.display()
            ))
        })?;
        *o.tokens.lock().unwrap_or_else(|e| e.into_inner()) = Tokens {
            access: Secret::new(access),
            refresh: Secret::new(refresh),
            generation: old.generation + 1,
        };
        tracing::info!(instance = %self.instance, "OAuth tokens refreshed and saved");
        Ok(())
    }
}

pub(super) fn is_token_error(e: &ProviderError) -> bool {
    e.code.as_deref().is_some_and(|c| {
        c.eq_ignore_ascii_case("expired_token") || c.eq_ignore_ascii_case("invalid_token")
    })
}

/// The token file: a JSON object with `access_token` and `refresh_token`.
pub(super) fn read_tokens(name: &str, path: &Path) -> Result<Tokens, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProviderError::fatal(format!(
            "provider {name}: cannot read oauth.token_file {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|_| {
        ProviderError::fatal(format!(
            "provider {name}: oauth.token_file {} is not a JSON object with access_token and refresh_token",
            path.display()
        ))
    })?;
    let get = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (get("access_token"), get("refresh_token")) {
        (Some(a), Some(r)) => Ok(Tokens {
            access: Secret::new(a),
            refresh: Secret::new(r),
            generation: 0,
        }),
        _ => Err(ProviderError::fatal(format!(
            "provider {name}: oauth.token_file {} lacks access_token or refresh_token",
            path.display()
        ))),
    }
}

/// Replace the token file atomically: a private temporary file beside it, synced, renamed over.
pub(super) fn write_tokens(path: &Path, tokens: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tokens".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(tokens)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
