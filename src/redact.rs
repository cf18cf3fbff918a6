//! The redactor: one process-wide registry of secret values, and one mask every exit applies.
//!
//! Types keep secrets out of what rosterd itself formats (`Secret` prints `***`, URLs are never
//! logged), but a provider, gateway or proxy may repeat a credential in its answer — "the key
//! <key> does not exist" — and that text flows into errors, outcomes, logs, the audit log and
//! the daemon's endpoints. So every value a [`crate::config::secret::Secret`] holds is
//! registered here when it is made (a resolved `{env}`/`{file}` reference, a minted Tencent
//! UserSig, OAuth tokens read or refreshed, the parts of a Bitrix24 webhook URL), and every
//! exit — stdout of the CLI, the tracing writer, the audit log, the daemon's responses — masks
//! them with [`mask`] or the [`Redacting`] writer.
//!
//! Values shorter than [`MIN_LEN`] are not masked: replacing `"k"` in every line would destroy
//! ordinary text, and a key that short is no secret. Secrets read from the files' references
//! are refused below that length when resolved (`SecretRef::resolve`), so every configured
//! secret is masked.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use aho_corasick::AhoCorasick;

/// The shortest value the mask replaces, and the shortest secret a reference may resolve to.
pub const MIN_LEN: usize = 8;

/// What a masked value is replaced with.
pub const MASK: &str = "***";

struct Registry {
    values: Vec<String>,
    matcher: Option<Arc<AhoCorasick>>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    values: Vec::new(),
    matcher: None,
});

/// Register a secret value: from now on every exit masks it, and the forms it takes on the
/// wire and in JSON (percent-encoded, JSON-escaped). Values shorter than [`MIN_LEN`] are
/// ignored (see the module's note).
pub fn register(value: &str) {
    if value.len() < MIN_LEN {
        return;
    }
    let mut forms = vec![value.to_string()];
    let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    forms.push(encoded);
    let json = serde_json::to_string(value).unwrap_or_default();
    forms.push(json.trim_matches('"').to_string());
    let Ok(mut reg) = REGISTRY.write() else {
        return;
    };
    let before = reg.values.len();
    for f in forms {
        if f.len() >= MIN_LEN && !reg.values.contains(&f) {
            reg.values.push(f);
        }
    }
    if reg.values.len() == before {
        return;
    }
    // Longest first, so a secret that contains another is masked whole.
    let mut patterns = reg.values.clone();
    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    reg.matcher = AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(&patterns)
        .ok()
        .map(Arc::new);
}

fn matcher() -> Option<Arc<AhoCorasick>> {
    REGISTRY.read().ok().and_then(|r| r.matcher.clone())
}

/// `text` with every registered secret replaced by [`MASK`].
pub fn mask(text: &str) -> Cow<'_, str> {
    let Some(m) = matcher() else {
        return Cow::Borrowed(text);
    };
    if !m.is_match(text) {
        return Cow::Borrowed(text);
    }
    let replacements = vec![MASK; m.patterns_len()];
    Cow::Owned(m.replace_all(text, &replacements))
}

/// Bytes masked as text (invalid UTF-8 is masked in its lossy form: these are log lines and
/// reports, never binary data).
pub fn mask_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let Some(m) = matcher() else {
        return Cow::Borrowed(bytes);
    };
    if !m.is_match(bytes) {
        return Cow::Borrowed(bytes);
    }
    let replacements = vec![MASK.as_bytes(); m.patterns_len()];
    Cow::Owned(m.replace_all_bytes(bytes, &replacements))
}

/// A writer that masks what goes through it, a line at a time: `write!` hands a formatted
/// line over in pieces, and a secret split across two pieces must still be masked. The rest
/// of a line is written on `flush` and on drop. (Secrets never hold a line break: resolved
/// values lose their trailing one, and a header or URL cannot carry one.)
pub struct Redacting<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> Redacting<W> {
    pub fn new(inner: W) -> Self {
        Redacting {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let masked = mask_bytes(&self.pending).into_owned();
            self.pending.clear();
            self.inner.write_all(&masked)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(end + 1);
            self.write_pending()?;
            self.pending = rest;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for Redacting<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A tracing `MakeWriter` whose writers mask: the log at every level passes through it.
#[derive(Clone)]
pub struct MakeRedacting<M>(pub M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for MakeRedacting<M>
{
    type Writer = Redacting<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting::new(self.0.make_writer())
    }
}

/// `eprintln!` through the mask: every message the CLI prints on stderr.
#[macro_export]
macro_rules! eprintln_masked {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::redact::mask(&format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_and_their_wire_forms_are_masked() {
        register("unit-test-secret/with+plus");
        let t = "key unit-test-secret/with+plus, encoded unit-test-secret%2Fwith%2Bplus.";
        assert_eq!(mask(t), "key ***, encoded ***.");
        let mut sink = Vec::new();
        {
            let mut out = Redacting::new(&mut sink);
            // A secret split across writes, as `write!` splits a formatted line.
            let part = "secret";
            write!(out, "x unit-test-{part}/with+plus y\nnext ").unwrap();
            out.write_all(b"unit-test-secret/with+plus").unwrap();
        }
        assert_eq!(String::from_utf8(sink).unwrap(), "x *** y\nnext ***");
    }

    #[test]
    fn short_values_are_not_masked_and_text_without_secrets_is_untouched() {
        register("short");
        assert_eq!(mask("a short line"), "a short line");
        assert!(matches!(mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_longest_secret_wins_where_two_overlap() {
        register("overlap-secret-1");
        register("overlap-secret-1-and-more");
        assert_eq!(mask("[overlap-secret-1-and-more]"), "[***]");
    }
}
