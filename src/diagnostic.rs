//! Problems found in mapping specs, each pinned to a file, line and column.
//!
//! Consultants edit YAML, not Rust: when a spec is wrong, the only useful answer is the place in
//! their file and what to change there. Every check in the loader and the compiler produces a
//! [`Diagnostic`] instead of stopping, so one `validate` run lists every problem at once (as
//! vector's config validation does). Rendering lives here too, kept apart from the data, so the
//! CLI, tests and snapshots all show the same text.

use std::fmt;
use std::sync::Arc;

/// How bad a problem is: errors stop a mapping set from loading, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A spec file's name and text, shared by every diagnostic that points into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A place in a spec file, 1-based as editors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
    /// Which file of a mapping set the place is in. A client's overlay puts values from its own
    /// file into a base mapping, so one mapping's positions can point into several files.
    pub file: FileId,
}

/// A file's index in the table of files a mapping set was loaded from ([`Files`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

impl Position {
    pub const fn new(line: usize, column: usize) -> Self {
        Position {
            line,
            column,
            file: FileId(0),
        }
    }

    pub fn in_file(self, file: FileId) -> Self {
        Position { file, ..self }
    }

    pub(crate) fn of(location: &serde_saphyr::Location) -> Self {
        Position::new(location.line() as usize, location.column() as usize)
    }
}

/// Every file a mapping set was read from, so a [`Position`] can name its file.
#[derive(Debug, Clone, Default)]
pub struct Files(Vec<Arc<SourceFile>>);

impl Files {
    /// Adds a file and returns the id its positions carry.
    pub fn add(&mut self, file: Arc<SourceFile>) -> FileId {
        self.0.push(file);
        FileId(self.0.len() as u32 - 1)
    }

    /// The id of a file added before, by identity.
    pub fn id_of(&self, file: &Arc<SourceFile>) -> Option<FileId> {
        self.0
            .iter()
            .position(|f| Arc::ptr_eq(f, file))
            .map(|i| FileId(i as u32))
    }

    /// Every file, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SourceFile>> {
        self.0.iter()
    }

    pub fn get(&self, id: FileId) -> &Arc<SourceFile> {
        &self.0[id.0 as usize]
    }

    /// An error at `position`, in whichever file the position is in.
    pub fn error(&self, position: Position, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.get(position.file), position, message)
    }

    /// A warning at `position`, in whichever file the position is in.
    pub fn warning(&self, position: Position, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.get(position.file), position, message)
    }
}

/// One problem in one spec file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Arc<SourceFile>,
    pub position: Position,
    pub message: String,
    /// A short note printed under the excerpt, pointing at the offending text.
    pub label: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &Arc<SourceFile>, position: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: Arc::clone(file),
            position,
            message: message.into(),
            label: None,
        }
    }

    pub fn warning(file: &Arc<SourceFile>, position: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, position, message)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `file:line:col: error: message` on one line; the alternate form (`{:#}`) adds the source line
/// with a caret under the column, as compilers do.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let Position { line, column, .. } = self.position;
        write!(
            f,
            "{}:{line}:{column}: {severity}: {}",
            self.file.name, self.message
        )?;
        if !f.alternate() || line == 0 {
            return Ok(());
        }
        let Some(source_line) = self.file.text.lines().nth(line - 1) else {
            return Ok(());
        };
        let gutter = line.to_string().len();
        let caret_indent: String = source_line
            .chars()
            .take(column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(
            f,
            "\n{:gutter$} |\n{line} | {source_line}\n{:gutter$} | {caret_indent}^",
            "", ""
        )?;
        if let Some(label) = &self.label {
            write!(f, " {label}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a mapping set.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Files in name order, and within a file by position, so output is stable.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file.name, a.position.line, a.position.column).cmp(&(
                &b.file.name,
                b.position.line,
                b.position.column,
            ))
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if f.alternate() {
                writeln!(f, "{d:#}")?;
            } else {
                write!(f, "{d}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_header_and_excerpt_with_caret_under_the_column() {
        let file = Arc::new(SourceFile {
            name: "mappings/x.yaml".into(),
            text: "name: x\n  bogus: 1\n".into(),
        });
        let d = Diagnostic::error(&file, Position::new(2, 3), "unknown key `bogus`")
            .with_label("not a mapping key");
        assert_eq!(
            d.to_string(),
            "mappings/x.yaml:2:3: error: unknown key `bogus`"
        );
        assert_eq!(
            format!("{d:#}"),
            "mappings/x.yaml:2:3: error: unknown key `bogus`\n  |\n2 |   bogus: 1\n  |   ^ not a mapping key"
        );
    }
}
