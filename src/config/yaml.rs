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

fn convert(e: serde_saphyr::Error) -> YamlError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    // The crate appends " at line L, column C" to the message; we print positions ourselves.
    let text = e.without_snippet().to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let message = message.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    YamlError {
        line,
        column,
        message,
    }
}

/// Parse one YAML document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(convert)
}

/// Parse every document of a multi-document file (`---` separated). Each document is parsed
/// on its own, so one broken document does not hide the problems of the others; positions
/// stay those of the whole file. Empty documents are skipped.
pub fn from_str_multi<T: DeserializeOwned>(text: &str) -> Vec<Result<T, YamlError>> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    // The common case, a valid file, takes one pass.
    if let Ok(all) = serde_saphyr::from_multiple::<T>(text) {
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
        out.push(serde_saphyr::from_str::<T>(&padded).map_err(convert));
    }
    out
}

/// Line and column of a spanned value.
pub fn pos<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line().max(1), s.referenced.column().max(1))
}
