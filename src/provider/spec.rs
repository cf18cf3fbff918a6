//! A provider kind is one spec: its capabilities, member and group id syntax, settings
//! (parsed with a key path for every problem, so `validate` points at it), the JSON-schema
//! fragment of its keys, how to connect, and how the sandbox points an instance at its
//! emulator. Each provider module exports one [`KindSpec`] value; [`Kind::spec`] is the only
//! `match` on kinds, and config, schema, build, demo and sandbox go through it.

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Capabilities, GroupId, Kind, MemberId, OpKind};
use crate::provider::{Provider, ProviderError};
use crate::sandbox::SandboxState;

/// Everything rosterd knows about one provider kind.
pub struct KindSpec {
    pub kind: Kind,
    /// What the kind supports, as data (`validate` checks manifests against it offline).
    pub caps: Capabilities,
    /// Normalise a raw member id written in a manifest or people.yaml to the provider's form,
    /// or say what was expected.
    pub parse_member: fn(&str) -> Result<MemberId, String>,
    /// Check a group id's syntax.
    pub parse_group: fn(&str) -> Result<GroupId, String>,
    /// The kind's own keys of a `providers:` entry, checked completely: every problem names
    /// the key it concerns, so config can give its position.
    pub settings: fn(&SettingsInput<'_>) -> Result<KindSettings, Vec<SettingError>>,
    /// The JSON schema of the kind's own keys (the common keys are added by `schema`).
    pub schema: fn() -> schemars::Schema,
    /// Build the client of an instance of this kind. Secrets are resolved here, late.
    pub connect: fn(&Instance) -> Result<Arc<dyn Provider>, ProviderError>,
    /// The client of an instance already pointed at this kind's sandbox emulator (`base_url`
    /// set), with the emulator's made-up credentials from the seed standing in for the
    /// instance's secrets. May adjust the instance's pacing for the emulator.
    pub sandbox_client: fn(&mut Instance, &SandboxState) -> anyhow::Result<Arc<dyn Provider>>,
}

impl Kind {
    /// The kind's spec: the one place a provider kind is registered.
    pub fn spec(self) -> &'static KindSpec {
        match self {
            Kind::Cometchat => &super::cometchat::SPEC,
            Kind::Tencent => &super::tencent::SPEC,
            Kind::Waha => &super::waha::SPEC,
            Kind::Bitrix24 => &super::bitrix24::SPEC,
        }
    }

    /// What the provider kind supports, as data.
    pub fn capabilities(self) -> &'static Capabilities {
        &self.spec().caps
    }

    /// Normalise a raw member id to the provider's form, or say what was expected.
    pub fn normalize_member(self, raw: &str) -> Result<MemberId, String> {
        (self.spec().parse_member)(raw)
    }

    /// Check a group id's syntax.
    pub fn normalize_group(self, raw: &str) -> Result<GroupId, String> {
        (self.spec().parse_group)(raw)
    }
}

/// Keys every provider instance accepts, whatever its kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonSettings {
    /// Replaces the provider's public address (proxies, the sandbox, tests).
    pub base_url: Option<String>,
    /// Members per write call, already capped at the provider's maximum per kind of call.
    pub batch_size: Option<usize>,
    /// Groups of this instance reconciled at the same time (default 4).
    pub concurrency: Option<usize>,
    /// Pause between write calls.
    pub interval: Option<Duration>,
    /// Cap on requests per second (reads and writes).
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
    /// Ids never removed, demoted, banned or muted (normalised for the kind).
    pub protected: Vec<MemberId>,
    /// A PEM bundle of certificate authorities trusted besides the system's (a private CA);
    /// absolute, checked to hold at least one certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// An http(s) proxy for every request of the instance (else `HTTPS_PROXY`/`NO_PROXY`).
    pub proxy: Option<String>,
}

/// A kind's own settings, of the type its module declares; only that module reads them back
/// ([`KindSettings::get`]), so adding a kind adds no variant anywhere.
#[derive(Clone)]
pub struct KindSettings(Arc<dyn AnySettings>);

trait AnySettings: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn same(&self, other: &dyn AnySettings) -> bool;
}

impl<T: Any + fmt::Debug + PartialEq + Send + Sync> AnySettings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same(&self, other: &dyn AnySettings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

impl KindSettings {
    pub fn new<T: Any + fmt::Debug + PartialEq + Send + Sync>(settings: T) -> Self {
        KindSettings(Arc::new(settings))
    }

    /// The settings as `T`, if they are of that type.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl PartialEq for KindSettings {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(other.0.as_ref())
    }
}

impl fmt::Debug for KindSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One validated `providers:` entry of rosterd.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    pub kind: Kind,
    pub common: CommonSettings,
    pub settings: KindSettings,
}

impl Instance {
    /// The batch size for one kind of write: `batch_size` capped at the provider's maximum.
    pub fn batch_size(&self, op: OpKind, caps: &Capabilities) -> usize {
        let max = caps.max_batch.get(op);
        self.common.batch_size.map_or(max, |b| b.clamp(1, max))
    }

    /// The kind's own settings as `T`; an instance built for another kind is a config error.
    pub fn settings<T: Any>(&self) -> Result<&T, ProviderError> {
        self.settings.get().ok_or_else(|| {
            ProviderError::fatal(format!(
                "provider {}: the settings are not those of a {} instance",
                self.name, self.kind
            ))
        })
    }
}

/// Build the client of one provider instance. Secrets are resolved here, late.
pub fn build(instance: &Instance) -> Result<Arc<dyn Provider>, ProviderError> {
    // Every kind sends a credential with each request (a key header, a signed query, a token
    // in the body or the path), so plain http to another host exposes it on the wire.
    if let Some(url) =
        (instance.common.base_url.as_deref()).and_then(|u| super::rest::parse_http_url(u).ok())
    {
        super::rest::warn_plain_http(&instance.name, "base_url", &url);
    }
    (instance.kind.spec().connect)(instance)
}

/// What a kind's settings parser is given: the entry's own keys (everything but the common
/// ones) as data, the common keys already checked, and the folder relative paths start from.
pub struct SettingsInput<'a> {
    pub name: &'a str,
    /// The folder of rosterd.yaml.
    pub root: &'a Path,
    pub common: &'a CommonSettings,
    pub own: serde_json::Value,
}

/// One problem with a kind's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key path it concerns (`region`, `oauth.endpoint`); `None` for the entry as a whole
    /// ("give exactly one of ...").
    pub key: Option<String>,
    pub message: String,
}

impl SettingError {
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        SettingError {
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
    pub fn entry(message: impl Into<String>) -> Self {
        SettingError {
            key: None,
            message: message.into(),
        }
    }
}

/// Deserialize a kind's own keys into its `Settings` type; a failure names the key path it
/// concerns (an unknown key: the key itself).
pub fn deserialize<T: serde::de::DeserializeOwned>(
    own: &serde_json::Value,
) -> Result<T, SettingError> {
    serde_path_to_error::deserialize(own.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let unknown = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next());
        // serde_path_to_error ends the path of an unknown key with that key, which the
        // message names already.
        let parent = match unknown {
            Some(_) => path.rsplit_once('.').map_or("", |(p, _)| p),
            None if path == "." => "",
            None => &path,
        };
        if parent.is_empty() {
            // A top-level unknown key: point at it. The kind's keys are not the only ones
            // accepted, so the list names the common keys too.
            let message = if unknown.is_some() {
                format!(
                    "{inner} (or one of the common keys: base_url, batch_size, interval, rate, timeout, protected, ca_file, proxy)"
                )
            } else {
                inner.clone()
            };
            return SettingError {
                key: unknown.map(str::to_string),
                message,
            };
        }
        // Nested keys (`oauth.client_id`) point at their top-level key, whose position is
        // the one a type error has always been reported at; the message names the rest.
        let top = parent.split(['.', '[']).next().unwrap_or("").to_string();
        let rest = parent.get(top.len()..).unwrap_or("").trim_start_matches('.');
        let message = if rest.is_empty() {
            inner
        } else {
            format!("{rest}: {inner}")
        };
        SettingError {
            key: Some(top).filter(|k| !k.is_empty()),
            message,
        }
    })
}

/// The draft-07 schema of a kind's `Settings` type.
pub fn settings_schema<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines of building a CometChat client whose base_url is `base`.
    fn build_logs(base: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "a-key-long-enough-to-mask").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let instance = Instance {
            name: "cc".into(),
            kind: Kind::Cometchat,
            common: CommonSettings {
                base_url: Some(base.into()),
                ..CommonSettings::default()
            },
            settings: KindSettings::new(crate::provider::cometchat::Settings {
                app_id: "app".into(),
                region: "eu".into(),
                api_key: crate::config::secret::SecretRef::File(key),
            }),
        };
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || build(&instance).map(|_| ()).unwrap());
        String::from_utf8(logs.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn credentials_over_plain_http_to_another_host_are_warned_about() {
        let remote = build_logs("http://10.1.2.3:8080/v3");
        assert!(
            remote.contains("WARN") && remote.contains("plain http"),
            "{remote}"
        );
        for quiet in [
            "http://127.0.0.1:9/v3",
            "http://localhost:9/v3",
            "https://10.1.2.3/v3",
        ] {
            let logs = build_logs(quiet);
            assert!(!logs.contains("plain http"), "{quiet}: {logs}");
        }
    }

    #[test]
    fn every_kind_has_its_own_spec() {
        for &k in Kind::ALL {
            assert_eq!(k.spec().kind, k, "the arm of {k} names another kind's spec");
            let schema = (k.spec().schema)().to_value();
            assert!(schema["properties"].is_object(), "{k}: {schema}");
        }
    }

    /// The Rust files below `dir` (a file or a folder), with their text.
    fn sources(dir: &str) -> Vec<(std::path::PathBuf, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut todo = vec![root];
        let mut out = Vec::new();
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
        out
    }

    #[test]
    fn the_model_and_the_planner_import_nothing_from_provider() {
        let files: Vec<_> = ["src/model.rs", "src/model", "src/plan"]
            .into_iter()
            .flat_map(sources)
            .collect();
        assert!(files.len() >= 5, "{files:?}");
        for (path, text) in files {
            assert!(
                !text.contains("crate::provider"),
                "{} imports from provider",
                path.display()
            );
        }
    }

    #[test]
    fn kind_spec_holds_the_only_match_on_kinds() {
        let arm = |line: &str| {
            let l = line.trim_start();
            Kind::ALL.iter().any(|k| {
                let name = format!("{k:?}");
                [" =>", " |", "=>", "|"]
                    .iter()
                    .any(|t| l.starts_with(&format!("Kind::{name}{t}")))
            })
        };
        let mut arms = Vec::new();
        for (path, text) in sources("src") {
            for line in text.lines().filter(|l| arm(l)) {
                arms.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
        assert_eq!(arms.len(), Kind::ALL.len(), "{arms:#?}");
        assert!(
            arms.iter().all(|a| a.contains("provider/spec.rs")),
            "{arms:#?}"
        );
    }

    #[test]
    fn kind_settings_compare_by_type_and_value() {
        #[derive(Debug, PartialEq)]
        struct A(u8);
        #[derive(Debug, PartialEq)]
        struct B(u8);
        let a = KindSettings::new(A(1));
        assert_eq!(a, KindSettings::new(A(1)));
        assert_ne!(a, KindSettings::new(A(2)));
        assert_ne!(a, KindSettings::new(B(1)));
        assert_eq!(a.get::<A>(), Some(&A(1)));
        assert_eq!(a.get::<B>(), None);
    }
}
