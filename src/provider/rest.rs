//! The small REST kit every client shares: base-URL parsing and checks, URLs built on a base,
//! secrets resolved with the key named in the error, the sensitive auth header, and `Debug`
//! output that names an instance without its secrets.

use std::fmt;

use reqwest::Url;
use reqwest::header::HeaderValue;

use crate::config::secret::{Secret, SecretRef};
use crate::provider::{ErrorClass, ProviderError};

/// Why a text is not a usable base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadUrl {
    /// It does not parse; the parser's reason.
    NotAUrl(String),
    /// It parses, but is not a hierarchical `http://` or `https://` URL.
    NotHttp,
}

/// Parse an `http://` or `https://` URL that paths can be appended to.
pub fn parse_http_url(raw: &str) -> Result<Url, BadUrl> {
    let url = Url::parse(raw.trim()).map_err(|e| BadUrl::NotAUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(BadUrl::NotHttp);
    }
    Ok(url)
}

/// What is wrong with a key that must hold an http(s) URL, without repeating the value (a URL
/// may carry a credential). `example` shows what was expected.
pub fn url_message(bad: &BadUrl, example: &str) -> String {
    match bad {
        BadUrl::NotAUrl(e) => format!("is not a URL ({e}); expected one such as {example}"),
        BadUrl::NotHttp => format!("must be an http:// or https:// URL such as {example}"),
    }
}

/// A client's base URL, checked: the same words whichever provider asks.
pub fn base_url(instance: &str, key: &str, raw: &str) -> Result<Url, ProviderError> {
    parse_http_url(raw).map_err(|bad| {
        ProviderError::fatal(match bad {
            BadUrl::NotAUrl(e) => format!("provider {instance}: {key} is not a URL: {e}"),
            BadUrl::NotHttp => format!("provider {instance}: {key} must be an http(s) URL"),
        })
    })
}

/// Whether a URL names this machine, where plain http exposes nothing on the wire.
pub fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Warn once per client built when a credential-carrying URL uses plain http to another host.
pub fn warn_plain_http(instance: &str, key: &str, url: &Url) {
    if url.scheme() == "http" && !is_loopback(url) {
        tracing::warn!(
            instance,
            key,
            "plain http to a host other than loopback: the credential travels unencrypted"
        );
    }
}

/// A secret as a header value marked sensitive (never printed by the HTTP stack); `None` when
/// it holds characters a header cannot carry, which [`check_header`] reports.
pub fn sensitive_header(secret: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(secret.expose()).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Refuse a secret that cannot be sent as a header, naming the key, never the value.
pub fn check_header(instance: &str, key: &str, secret: &Secret) -> Result<(), ProviderError> {
    if HeaderValue::from_str(secret.expose()).is_err() {
        return Err(ProviderError::fatal(format!(
            "provider {instance}: the {key} holds characters that cannot be sent in a header"
        )));
    }
    Ok(())
}

/// `Debug` of a client: its type, the fields given (secrets among them print `***` through
/// [`Secret`]) and nothing else, so connections, caches and tokens never reach a log line.
pub fn debug_client(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    fields: &[(&str, &dyn fmt::Debug)],
) -> fmt::Result {
    let mut d = f.debug_struct(name);
    for (k, v) in fields {
        d.field(k, v);
    }
    d.finish_non_exhaustive()
}

/// `base` with `segments` appended (each percent-encoded) and `query` pairs added. The base was
/// checked by [`parse_http_url`], so it can take a path.
pub fn url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("a base checked by parse_http_url takes a path");
        path.pop_if_empty();
        path.extend(segments);
    }
    if !query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    url
}

/// Resolve one secret of an instance's settings; an error names the instance and the key,
/// never the value.
pub fn resolve(instance: &str, key: &str, secret: &SecretRef) -> Result<Secret, ProviderError> {
    secret
        .resolve()
        .map_err(|e| ProviderError::fatal(format!("provider {instance}: {key}: {e}")))
}

/// The class of an answer that carries no provider code of its own, by its status alone:
/// 429 is a throttle, 408 and 5xx a passing fault, anything else final.
pub fn class_of_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::Throttled,
        408 | 500.. => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hierarchical_http_urls_are_base_urls() {
        assert!(parse_http_url("https://a.example/v3").is_ok());
        assert!(parse_http_url(" http://127.0.0.1:9/ ").is_ok());
        assert_eq!(parse_http_url("ftp://a.example"), Err(BadUrl::NotHttp));
        assert_eq!(parse_http_url("mailto:a@b.c"), Err(BadUrl::NotHttp));
        assert!(matches!(
            parse_http_url("a.example/x"),
            Err(BadUrl::NotAUrl(_))
        ));
    }

    #[test]
    fn loopback_is_localhost_and_loopback_addresses_only() {
        for u in ["http://localhost:1", "http://127.0.0.5/", "http://[::1]:8/"] {
            assert!(is_loopback(&Url::parse(u).unwrap()), "{u}");
        }
        for u in [
            "http://10.0.0.1/",
            "http://localhost.example/",
            "http://portal/",
        ] {
            assert!(!is_loopback(&Url::parse(u).unwrap()), "{u}");
        }
    }

    #[test]
    fn auth_headers_are_sensitive_and_bad_ones_named_not_shown() {
        assert!(sensitive_header(&Secret::new("k")).unwrap().is_sensitive());
        let bad = Secret::new("line\nbreak-secret");
        assert!(sensitive_header(&bad).is_none());
        let e = check_header("cc", "api_key", &bad).unwrap_err();
        assert!(e.message.contains("api_key") && !e.message.contains("break-secret"));
    }

    #[test]
    fn client_debug_shows_only_the_fields_given() {
        struct C(Secret);
        impl fmt::Debug for C {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                debug_client(f, "C", &[("key", &self.0)])
            }
        }
        let d = format!("{:?}", C(Secret::new("hunter2")));
        assert!(d.starts_with("C {") && !d.contains("hunter2"), "{d}");
    }
}
