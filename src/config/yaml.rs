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

/// Parse every document of a multi-document file (`---` separated). Empty documents are skipped.
pub fn from_str_multi<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_saphyr::from_multiple(text).map_err(convert)
}

/// Line and column of a spanned value.
pub fn pos<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line().max(1), s.referenced.column().max(1))
}
