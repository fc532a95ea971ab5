//! Problems printed for people and for machines: one place for GitHub's annotation syntax.

use marketsync::diagnostic::{Diagnostic, Severity};

pub fn severity(d: &Diagnostic) -> &'static str {
    match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// A GitHub Actions workflow command, which GitHub shows on the pull request's line.
pub fn annotation(d: &Diagnostic) -> String {
    format!(
        "::{} file={},line={},col={}::{}",
        severity(d),
        escape_property(&d.file.name),
        d.position.line,
        d.position.column,
        escape_data(&d.message)
    )
}

/// Data in a workflow command: GitHub reads %, CR and LF as escapes.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A property (file=...): escaped as data, and also : and , which separate properties.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Diagnostics as JSON objects, for `--format json`.
pub fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "severity": severity(d),
        "file": d.file.name,
        "line": d.position.line,
        "column": d.position.column,
        "message": d.message,
    })
}
