//! Every YAML call of the crate goes through this module, so the parser can be swapped in one
//! file. serde-saphyr rejects duplicate keys, bounds alias expansion and gives every node a
//! line and column.

use serde::de::DeserializeOwned;

pub use serde_saphyr::Spanned;

/// A parse or type error at a position of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

fn convert(e: serde_saphyr::Error, path: Option<String>) -> YamlError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    // The crate appends " at line L, column C" to the message; we print positions ourselves.
    let text = e.without_snippet().to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let message = plain(&message.replace(", set DuplicateKeyPolicy in Options if acceptable", ""));
    // Type errors name the key they concern: "admins: expected a list" beats "expected a list"
    // when a line holds several keys (flow mappings).
    let message = match path {
        Some(p) if !message.starts_with("duplicate mapping key") => format!("{p}: {message}"),
        _ => message,
    };
    YamlError {
        line,
        column,
        message,
    }
}

/// The parser's vocabulary in the words of the files' readers.
fn plain(message: &str) -> String {
    match message {
        "expected sequence start" => "expected a list".to_string(),
        "expected mapping start" => "expected a mapping (key: value)".to_string(),
        "expected string scalar" | "expected scalar" => {
            "expected a single value, not a list or a mapping".to_string()
        }
        "cannot deserialize null into string; use Option<String>" => {
            "expected a value, found nothing".to_string()
        }
        other => other.to_string(),
    }
}

/// The key path of an error (`participants[1]`), without the fields `Spanned` adds; `None` at
/// the top of the document.
fn key_path(path: &serde_path_to_error::Path, unknown_field: bool) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let segments: Vec<&Segment> = path.iter().collect();
    // The path of an unknown key ends with that key, which the message names already.
    let keep = segments.len() - usize::from(unknown_field && !segments.is_empty());
    for seg in &segments[..keep] {
        match seg {
            Segment::Map { key } if matches!(key.as_str(), "value" | "referenced" | "span") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// YAML 1.2 booleans only: a member called `no` or `y` is a name, not `false` (the "Norway
/// problem" of YAML 1.1). Nothing in the files is a boolean.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// Parse one YAML document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut path = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let unknown = matches!(
                e.inner().without_snippet(),
                serde_saphyr::Error::SerdeUnknownField { .. }
            );
            path = key_path(e.path(), unknown);
            e.into_inner()
        })
    })
    .map_err(|e| convert(e, path))
}

/// Parse every document of a multi-document file (`---` separated). Each document is parsed
/// on its own, so one broken document does not hide the problems of the others; positions
/// stay those of the whole file. Empty documents are skipped.
pub fn from_str_multi<T: DeserializeOwned>(text: &str) -> Vec<Result<T, YamlError>> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    // The common case, a valid file, takes one pass.
    if let Ok(all) = serde_saphyr::from_multiple_with_options::<T>(text, options()) {
        return all.into_iter().map(Ok).collect();
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut starts = vec![0usize];
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_end();
        if i > 0 && (t == "---" || t.starts_with("--- ")) {
            starts.push(i);
        }
    }
    let mut out = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let body: String = lines[start..end].concat();
        if body.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
        }) {
            continue;
        }
        // Blank lines in front keep every line number that of the whole file.
        let padded = "\n".repeat(start) + &body;
        out.push(from_str::<T>(&padded));
    }
    out
}

/// Line and column of a spanned value.
pub fn pos<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line().max(1), s.referenced.column().max(1))
}
