//! Secrets: named in rosterd.yaml as `{ env: NAME }` or `{ file: PATH }`, resolved late (when a
//! provider client is built), and printed as `***` everywhere.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where a secret comes from. Inline values are not accepted: secrets never live in git.
#[derive(Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// The name of an environment variable.
    Env(String),
    /// A file holding the secret (trailing newline trimmed); relative to rosterd.yaml.
    File(PathBuf),
}

/// The accepted shapes, plus the inline string we refuse with a clear message.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSecretRef {
    Ref(RefShape),
    Inline(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum RefShape {
    Env(String),
    File(PathBuf),
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSecretRef::deserialize(d)? {
            RawSecretRef::Ref(RefShape::Env(n)) => Ok(SecretRef::Env(n)),
            RawSecretRef::Ref(RefShape::File(p)) => Ok(SecretRef::File(p)),
            RawSecretRef::Inline(_) => Err(serde::de::Error::custom(
                "expected a secret reference `{ env: NAME }` or `{ file: PATH }`; \
                 secrets are never written inline",
            )),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl SecretRef {
    /// Make a `file` reference absolute against the folder of rosterd.yaml.
    pub fn rooted(self, base: &Path) -> SecretRef {
        match self {
            SecretRef::File(p) if p.is_relative() => SecretRef::File(base.join(p)),
            other => other,
        }
    }

    /// Read the secret now. The error names the variable or file, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))?,
            SecretRef::File(path) => {
                warn_if_readable_by_others(path);
                // A secret is a line, a key or a PEM block: anything bigger is a wrong path.
                super::read_bounded(path, 64 * 1024)
                    .map_err(|e| format!("secret file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
        };
        if value.is_empty() {
            return Err(format!("secret {self:?} is empty"));
        }
        // Shorter values could not be masked in every output (see `crate::redact`).
        if value.len() < crate::redact::MIN_LEN {
            return Err(format!(
                "secret {self:?} is {} characters long; rosterd needs at least {} to keep it \
                 out of every output",
                value.chars().count(),
                crate::redact::MIN_LEN
            ));
        }
        Ok(Secret::new(value))
    }
}

/// The permission bits that let the group or others read `path`, if any (as ssh refuses a
/// private key anyone else can read; rosterd warns and goes on, since container secrets are
/// often mounted 0644 on purpose).
pub fn readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if let Some(mode) = readable_by_others(path) {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:o}"),
            "secret file is readable by group or others: chmod 600 it"
        );
    }
}

/// A resolved secret. `Debug` and `Display` print `***`; use [`Secret::expose`] only where the
/// value goes onto the wire.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Every secret made is registered with the redactor, so no output shows it (values
    /// shorter than [`crate::redact::MIN_LEN`] excepted).
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::redact::register(&value);
        Secret(SecretString::from(value))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_found_and_a_private_one_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "a-long-enough-secret\n").unwrap();
        for (mode, loose) in [
            (0o644, true),
            (0o640, true),
            (0o604, true),
            (0o600, false),
            (0o400, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&f).is_some(), loose, "{mode:o}");
        }
        assert_eq!(
            SecretRef::File(f).resolve().unwrap().expose(),
            "a-long-enough-secret"
        );
    }

    #[test]
    fn secrets_shorter_than_the_mask_minimum_are_refused_naming_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "short\n").unwrap();
        let e = SecretRef::File(f).resolve().unwrap_err();
        assert!(
            e.contains("key") && e.contains("5 characters") && !e.contains("short"),
            "{e}"
        );
    }

    #[test]
    fn secrets_print_as_stars() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
