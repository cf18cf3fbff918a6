//! Diagnostics: every error in the files, with file, line and column, collected before failing.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, (line, column): (u64, u64), message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl Diagnostic {
    /// The diagnostic as a source frame — the file's name, the offending line with its
    /// neighbours and a pointer at the column — for a terminal (miette's graphical report).
    /// Falls back to the one-line form when the file cannot be read or the position is past
    /// its end.
    pub fn framed(&self, color: bool) -> String {
        let Ok(text) = std::fs::read_to_string(&self.file) else {
            return format!("{self}\n");
        };
        let Some(offset) = offset_of(&text, self.line, self.column) else {
            return format!("{self}\n");
        };
        // The pointer covers the token at the position: a quoted value to its closing quote,
        // else up to a space, comma or bracket.
        let rest = &text[offset..];
        let len = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].find([q, '\n']).map_or(1, |i| i + 2),
            _ => rest
                .find(|c: char| c.is_whitespace() || ",]}".contains(c))
                .unwrap_or(rest.len()),
        }
        .max(1)
        .min(rest.len());
        let diag = miette::MietteDiagnostic::new(self.message.clone())
            .with_severity(miette::Severity::Error)
            .with_label(miette::LabeledSpan::at(offset..offset + len, "here"));
        // miette appends the line and column to the name.
        let source = miette::NamedSource::new(self.file.display().to_string(), text);
        let report = miette::Report::new(diag).with_source_code(source);
        let theme = if color {
            miette::GraphicalTheme::unicode()
        } else {
            miette::GraphicalTheme::unicode_nocolor()
        };
        let mut out = String::new();
        match miette::GraphicalReportHandler::new_themed(theme)
            .render_report(&mut out, report.as_ref())
        {
            Ok(()) => out,
            Err(_) => format!("{self}\n"),
        }
    }
}

/// The byte offset of a 1-based line and column (in characters), if the text has it.
fn offset_of(text: &str, line: u64, column: u64) -> Option<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)? as usize)
        .map(str::len)
        .sum();
    let this = text.get(start..)?.split('\n').next()?;
    if start >= text.len() && !(start == text.len() && column <= 1) {
        return None;
    }
    let col = column.saturating_sub(1) as usize;
    let within = this
        .char_indices()
        .nth(col)
        .map_or(this.len().min(col), |(i, _)| i);
    Some((start + within).min(text.len().saturating_sub(1)))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a load, in file and position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    /// `Ok(value)` when nothing was reported, otherwise every diagnostic, sorted.
    pub fn into_result<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort();
            self.0.dedup();
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// Every diagnostic as a source frame (see [`Diagnostic::framed`]).
    pub fn framed(&self, color: bool) -> String {
        self.0.iter().map(|d| d.framed(color)).collect()
    }

    /// Every diagnostic as a JSON object `{file, line, column, severity, message}`, for tools.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            (self.0.iter())
                .map(|d| {
                    serde_json::json!({
                        "file": d.file.display().to_string(), "line": d.line,
                        "column": d.column, "severity": "error", "message": d.message,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_the_offending_line_and_points_at_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.yaml");
        std::fs::write(&file, "group: g\nprovider: nope\nid: x\n").unwrap();
        let d = Diagnostic::new(&file, (2, 11), "unknown provider instance \"nope\"");
        let f = d.framed(false);
        assert!(f.contains("g.yaml:2:11]"), "{f}");
        assert!(f.contains("provider: nope"), "{f}");
        assert!(f.contains("unknown provider instance"), "{f}");
        // The pointer sits under `nope`: the column of the marker line is that of the value.
        let line = f.lines().find(|l| l.contains("provider: nope")).unwrap();
        let marker = f
            .lines()
            .find(|l| l.contains('┬') || l.contains('─'))
            .unwrap();
        let at = line.find("nope").unwrap();
        assert!(
            marker[..]
                .chars()
                .nth(line[..at].chars().count())
                .is_some_and(|c| c != ' '),
            "{f}"
        );
    }

    #[test]
    fn a_frame_falls_back_to_the_plain_line_without_the_file() {
        let d = Diagnostic::new(Path::new("/nonexistent/x.yaml"), (3, 4), "bad");
        assert_eq!(d.framed(false), "/nonexistent/x.yaml:3:4: error: bad\n");
    }
}
