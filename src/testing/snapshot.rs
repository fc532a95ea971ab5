//! Snapshot files in insta's format, read and written without insta.
//!
//! `marketsync test` renders fixture deliveries through a client's mappings and compares the
//! requests with reviewed files under `snapshots/`. Those files are the same files the crate's
//! own tests keep with [insta](https://insta.rs), so one tool reviews both: `cargo insta review`
//! and `cargo insta accept` work on what `marketsync test` writes, and `marketsync test` reads
//! what insta wrote. insta itself is a test-only dependency built around `assert_*!` macros and
//! a test binary, so this module reimplements the small part of its file format the CLI needs:
//!
//! ```text
//! ---
//! source: mappings/orders.yaml
//! expression: orders over examples/orders.ndjson
//! input_file: examples/orders.ndjson
//! ---
//! {"method": "POST", ...}
//! ```
//!
//! A YAML header between two `---` lines, then the contents, written exactly as insta 1.x
//! writes them so a file round-trips through `cargo insta accept` unchanged. A pending (new,
//! unreviewed) snapshot goes next to the accepted one as `<name>.snap.new`, which is where
//! `cargo insta review` looks for it; accepting it replaces `<name>.snap`.
//!
//! Comparison ignores the header and follows insta's rule for the contents: trailing
//! whitespace at the end is dropped and CRLF line endings count as LF (whitespace at the end of
//! an inner line still counts). [`diff`] shows what differs under the same rule.

use similar::{Algorithm, ChangeTag, TextDiff};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One snapshot file: insta's metadata fields that mean something for marketsync, then the
/// contents.
///
/// insta also writes `assertion_line` (only in pending files) and `snapshot_kind`/`extension`
/// (binary snapshots); they are ignored on reading and never written. Unknown header keys are
/// ignored, as insta does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// What produced the snapshot, relative to the project root: a test file for insta, the
    /// mapping file for `marketsync test`. Empty means absent (not written).
    pub source: String,
    /// A one-line description of what was rendered; `cargo insta review` shows it.
    pub expression: Option<String>,
    /// A longer human description; `cargo insta review` shows it above the diff.
    pub description: Option<String>,
    /// Arbitrary structured context, written as YAML in the header.
    pub info: Option<serde_json::Value>,
    /// The input the snapshot was rendered from (insta fills it in for `glob!` tests), e.g. the
    /// fixture delivery.
    pub input_file: Option<String>,
    /// The snapshot itself. Read back as insta reads it: without the final newline, with CRLF
    /// line endings as LF.
    pub contents: String,
}

/// Why a snapshot file could not be read or written; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {}: {error}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("cannot write snapshot {}: {error}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    /// The file exists but is not a text snapshot in insta's format.
    #[error("{}: not an insta snapshot: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// `cargo insta review` only finds pending snapshots named `*.snap.new`.
    #[error(
        "{}: a pending snapshot needs a path ending in `.snap` for `cargo insta review` to find it",
        path.display()
    )]
    NotSnapPath { path: PathBuf },
}

/// The `---` line that opens and closes the header.
const HEADER_FENCE: &str = "---";
/// Lines of unchanged context around each change in [`diff`].
const DIFF_CONTEXT: usize = 3;
/// Changed lines [`diff`] shows before summarising the rest.
const DIFF_MAX_CHANGED_LINES: usize = 200;

impl Snapshot {
    /// A snapshot with the given source and contents and no other metadata.
    pub fn new(source: impl Into<String>, contents: impl Into<String>) -> Snapshot {
        Snapshot {
            source: source.into(),
            contents: contents.into(),
            ..Snapshot::default()
        }
    }

    /// Reads the snapshot at `path`; `Ok(None)` when there is no such file.
    pub fn read(path: impl AsRef<Path>) -> Result<Option<Snapshot>, SnapshotError> {
        let path = path.as_ref();
        match fs::read_to_string(path) {
            Ok(text) => Snapshot::parse(&text, path).map(Some),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SnapshotError::Read {
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    /// Writes the snapshot to `path`, creating missing folders. The file is written under a
    /// temporary name in the same folder and renamed over `path`, so readers (and a killed
    /// run) never see half a file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), SnapshotError> {
        write_atomically(path.as_ref(), self.render().as_bytes())
    }

    /// Writes the snapshot as pending next to `path` (`<path>.new`, i.e. `x.snap.new` for
    /// `x.snap`), where `cargo insta review`/`accept`/`reject` find it. `path` must end in
    /// `.snap`.
    pub fn write_pending(&self, path: impl AsRef<Path>) -> Result<PathBuf, SnapshotError> {
        let path = path.as_ref();
        if path.extension().is_none_or(|ext| ext != "snap") {
            return Err(SnapshotError::NotSnapPath {
                path: path.to_path_buf(),
            });
        }
        let pending = pending_path(path);
        self.write(&pending)?;
        Ok(pending)
    }

    /// Removes the pending snapshot for `path`, if any; `Ok(true)` when there was one.
    pub fn remove_pending(path: impl AsRef<Path>) -> Result<bool, SnapshotError> {
        let pending = pending_path(path.as_ref());
        match fs::remove_file(&pending) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(SnapshotError::Write {
                path: pending,
                error,
            }),
        }
    }

    /// Whether the two snapshots have the same contents under insta's rule (metadata is
    /// ignored). See [`contents_match`].
    pub fn matches(&self, other: &Snapshot) -> bool {
        contents_match(&self.contents, &other.contents)
    }

    /// The file as insta writes it: the header, then the normalised contents and a newline.
    pub fn render(&self) -> String {
        let mut header = Vec::new();
        let string = |s: &str| serde_json::Value::String(s.to_owned());
        if !self.source.is_empty() {
            header.push(("source", string(&self.source)));
        }
        if let Some(description) = &self.description {
            header.push(("description", string(description)));
        }
        if let Some(expression) = &self.expression {
            header.push(("expression", string(expression)));
        }
        if let Some(info) = &self.info {
            header.push(("info", info.clone()));
        }
        if let Some(input_file) = &self.input_file {
            header.push(("input_file", string(input_file)));
        }
        let mut out = format!("{HEADER_FENCE}\n");
        yaml::emit_fields(&mut out, &header);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(HEADER_FENCE);
        out.push('\n');
        out.push_str(&normalize(&self.contents));
        out.push('\n');
        out
    }

    /// Parses a file's text the way insta's `Snapshot::from_file` does.
    fn parse(text: &str, path: &Path) -> Result<Snapshot, SnapshotError> {
        let malformed = |reason: String| SnapshotError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let mut lines = text.split_inclusive('\n');
        if lines.next().map(str::trim_end) != Some(HEADER_FENCE) {
            return Err(malformed(format!(
                "the first line is not `{HEADER_FENCE}` (insta's legacy header format is not supported)"
            )));
        }
        let mut header = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line.trim_end() == HEADER_FENCE {
                closed = true;
                break;
            }
            header.push_str(line);
        }
        if !closed {
            return Err(malformed(format!(
                "the header has no closing `{HEADER_FENCE}` line"
            )));
        }
        // insta joins the remaining lines with `\n`: CRLF becomes LF, the last newline goes.
        let contents = lines
            .map(|line| match line.strip_suffix('\n') {
                Some(line) => line.strip_suffix('\r').unwrap_or(line),
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n");

        let header: serde_json::Value = if header.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_saphyr::from_str(&header)
                .map_err(|err| malformed(format!("the header is not YAML: {err}")))?
        };
        let fields = match header {
            serde_json::Value::Object(fields) => fields,
            serde_json::Value::Null => serde_json::Map::new(),
            _ => return Err(malformed("the header is not a YAML mapping".into())),
        };
        if fields.get("snapshot_kind").and_then(|kind| kind.as_str()) == Some("binary") {
            return Err(malformed("binary snapshots are not supported".into()));
        }
        // Like insta, a field of the wrong type counts as absent.
        let text_field = |key: &str| fields.get(key).and_then(|v| v.as_str()).map(String::from);
        Ok(Snapshot {
            source: text_field("source").unwrap_or_default(),
            expression: text_field("expression"),
            description: text_field("description"),
            info: fields.get("info").filter(|v| !v.is_null()).cloned(),
            input_file: text_field("input_file"),
            contents,
        })
    }
}

/// Where the pending snapshot for `path` goes: `path` with `.new` appended (`x.snap.new`).
pub fn pending_path(path: impl AsRef<Path>) -> PathBuf {
    let mut pending = path.as_ref().as_os_str().to_owned();
    pending.push(".new");
    PathBuf::from(pending)
}

/// The contents as insta compares them: trailing whitespace removed, CRLF as LF.
pub fn normalize(contents: &str) -> String {
    contents.trim_end().replace("\r\n", "\n")
}

/// Whether two snapshot contents match under insta's rule ([`normalize`] both sides).
pub fn contents_match(old: &str, new: &str) -> bool {
    normalize(old) == normalize(new)
}

/// A unified-style line diff from `old` to `new` for people to read: `@@ -l,n +l,n @@` hunk
/// headers, ` `/`-`/`+` line markers, three lines of context. Both sides are [`normalize`]d
/// first, so the diff is empty exactly when [`contents_match`]. After the first 200 changed
/// lines the rest is summarised as `… N more changed lines`. With `colored`, ANSI colours
/// for a terminal: red removals, green additions, cyan hunk headers, dim context.
pub fn diff(old: &str, new: &str, colored: bool) -> String {
    let (old, new) = (
        with_final_newline(normalize(old)),
        with_final_newline(normalize(new)),
    );
    let text_diff = TextDiff::configure()
        .algorithm(Algorithm::Patience)
        .timeout(Duration::from_secs(2))
        .diff_lines(&old, &new);
    let total_changed = text_diff
        .iter_all_changes()
        .filter(|change| change.tag() != ChangeTag::Equal)
        .count();

    let paint = |code: &str, text: &str| {
        if colored {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let mut out = String::new();
    let mut shown = 0;
    'hunks: for hunk in text_diff
        .unified_diff()
        .context_radius(DIFF_CONTEXT)
        .iter_hunks()
    {
        let _ = writeln!(out, "{}", paint("36", &hunk.header().to_string()));
        for change in hunk.iter_changes() {
            let (marker, code) = match change.tag() {
                ChangeTag::Equal => (' ', "2"),
                ChangeTag::Delete => ('-', "31"),
                ChangeTag::Insert => ('+', "32"),
            };
            if change.tag() != ChangeTag::Equal {
                if shown == DIFF_MAX_CHANGED_LINES {
                    break 'hunks;
                }
                shown += 1;
            }
            let line = change.value().trim_end_matches('\n');
            let _ = writeln!(out, "{}", paint(code, &format!("{marker}{line}")));
        }
    }
    if shown < total_changed {
        let _ = writeln!(out, "… {} more changed lines", total_changed - shown);
    }
    out
}

fn with_final_newline(mut text: String) -> String {
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Writes `bytes` to a hidden temporary file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let failed = |error| SnapshotError::Write {
        path: path.to_path_buf(),
        error,
    };
    let name = path.file_name().ok_or_else(|| {
        failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no file name",
        ))
    })?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(folder) = folder {
        fs::create_dir_all(folder).map_err(failed)?;
    }
    // Hidden and not ending in `.new`, so cargo-insta never mistakes it for a snapshot.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = path.with_file_name(temp_name);
    let written = fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(failed(error));
    }
    Ok(())
}

/// The header as insta's vendored YAML emitter writes it (block style, two-space indent,
/// strings quoted only when they must be), so files match insta's byte for byte.
mod yaml {
    use serde_json::Value;
    use std::fmt::Write as _;

    /// The top-level mapping of header fields, without the document start line.
    pub(super) fn emit_fields(out: &mut String, fields: &[(&str, Value)]) {
        let mut emitter = Emitter { out, level: -1 };
        emitter.hash(
            fields.iter().map(|(key, value)| (*key, value)),
            fields.len(),
        );
    }

    struct Emitter<'a> {
        out: &'a mut String,
        level: isize,
    }

    impl Emitter<'_> {
        fn indent(&mut self) {
            for _ in 0..self.level.max(0) {
                self.out.push_str("  ");
            }
        }

        fn node(&mut self, value: &Value) {
            match value {
                Value::Array(items) => self.array(items),
                Value::Object(map) => {
                    self.hash(map.iter().map(|(k, v)| (k.as_str(), v)), map.len())
                }
                Value::String(s) => self.string(s),
                Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                Value::Number(n) => {
                    // insta goes through its own number types: floats as Rust prints an f64.
                    if n.is_f64() {
                        let _ = write!(self.out, "{}", n.as_f64().unwrap_or_default());
                    } else {
                        let _ = write!(self.out, "{n}");
                    }
                }
                Value::Null => self.out.push('~'),
            }
        }

        fn string(&mut self, s: &str) {
            if need_quotes(s) {
                escape(self.out, s);
            } else {
                self.out.push_str(s);
            }
        }

        fn array(&mut self, items: &[Value]) {
            if items.is_empty() {
                self.out.push_str("[]");
                return;
            }
            self.level += 1;
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    self.out.push('\n');
                    self.indent();
                }
                self.out.push('-');
                self.value(true, item);
            }
            self.level -= 1;
        }

        fn hash<'v>(&mut self, entries: impl Iterator<Item = (&'v str, &'v Value)>, len: usize) {
            if len == 0 {
                self.out.push_str("{}");
                return;
            }
            self.level += 1;
            for (index, (key, value)) in entries.enumerate() {
                if index > 0 {
                    self.out.push('\n');
                    self.indent();
                }
                self.string(key);
                self.out.push(':');
                self.value(false, value);
            }
            self.level -= 1;
        }

        /// A value after `key:` or `-`: collections in compact style after `-`, otherwise on
        /// the next line one level deeper; scalars after a space.
        fn value(&mut self, inline: bool, value: &Value) {
            let empty = match value {
                Value::Array(items) => items.is_empty(),
                Value::Object(map) => map.is_empty(),
                _ => {
                    self.out.push(' ');
                    self.node(value);
                    return;
                }
            };
            if inline || empty {
                self.out.push(' ');
            } else {
                self.out.push('\n');
                self.level += 1;
                self.indent();
                self.level -= 1;
            }
            self.node(value);
        }
    }

    /// insta's rule for when a string needs double quotes.
    fn need_quotes(s: &str) -> bool {
        s.is_empty()
            || s.starts_with(' ')
            || s.ends_with(' ')
            || s.starts_with(['&', '*', '?', '|', '-', '<', '>', '=', '!', '%', '@'])
            || s.contains(|c: char| {
                matches!(c, ':' | '{' | '}' | '[' | ']' | ',' | '#' | '`' | '"' | '\'' | '\\'
                    | '\0'..='\x06' | '\t' | '\n' | '\r' | '\x0e'..='\x1a' | '\x1c'..='\x1f')
            })
            || [
                "yes", "Yes", "YES", "no", "No", "NO", "True", "TRUE", "true", "False", "FALSE",
                "false", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
            ]
            .contains(&s)
            || s.starts_with('.')
            || s.starts_with("0x")
            || s.parse::<i64>().is_ok()
            || s.parse::<f64>().is_ok()
    }

    /// A double-quoted YAML string with JSON-style escapes, as insta writes it.
    fn escape(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x08' => out.push_str("\\b"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\x0c' => out.push_str("\\f"),
                '\r' => out.push_str("\\r"),
                '\0'..='\x1f' | '\x7f' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Snapshot {
        Snapshot {
            source: "mappings/orders.yaml".into(),
            expression: Some("orders over examples/orders.ndjson".into()),
            description: Some("Order placed: \"Track\" event, profile upsert".into()),
            info: Some(json!({
                "client": "acme",
                "mappings": ["orders.yaml", "refunds.yaml"],
                "revision": "2025-10-15",
                "count": 3,
                "nested": {"empty": {}, "none": null, "list": [], "yes": "yes", "flag": true},
            })),
            input_file: Some("examples/orders.ndjson".into()),
            contents:
                "{\n  \"method\": \"POST\",\n  \"path\": \"/api/events\"\n}\n--- report ---\nok"
                    .into(),
        }
    }

    fn repo_path(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folder/orders@orders.ndjson.snap");
        let snapshot = sample();
        snapshot.write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), Some(snapshot.clone()));
        // Only the snapshot itself is in the folder: the temporary file was renamed.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["orders@orders.ndjson.snap"]);

        // Writing again replaces the file.
        let changed = Snapshot::new("mappings/orders.yaml", "changed");
        changed.write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), Some(changed));
    }

    #[test]
    fn the_file_looks_like_insta_writes_it() {
        let snapshot = Snapshot {
            info: Some(json!({"client": "acme", "list": ["a", 1], "n": {"k": "v"}})),
            ..sample()
        };
        assert_eq!(
            snapshot.render(),
            "---\n\
             source: mappings/orders.yaml\n\
             description: \"Order placed: \\\"Track\\\" event, profile upsert\"\n\
             expression: orders over examples/orders.ndjson\n\
             info:\n  client: acme\n  list:\n    - a\n    - 1\n  n:\n    k: v\n\
             input_file: examples/orders.ndjson\n\
             ---\n\
             {\n  \"method\": \"POST\",\n  \"path\": \"/api/events\"\n}\n--- report ---\nok\n"
        );
        assert_eq!(
            Snapshot::new("a.yaml", "x\r\ny  \n\n").render(),
            "---\nsource: a.yaml\n---\nx\ny\n"
        );
    }

    #[test]
    fn missing_file_is_none_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Snapshot::read(dir.path().join("absent.snap")).unwrap(),
            None
        );

        let path = dir.path().join("plain.snap");
        fs::write(&path, "just text\n").unwrap();
        let err = Snapshot::read(&path).unwrap_err();
        assert!(matches!(err, SnapshotError::Malformed { .. }));
        assert!(err.to_string().contains("plain.snap"), "{err}");

        fs::write(&path, "---\nsource: a\n").unwrap();
        assert!(
            Snapshot::read(&path)
                .unwrap_err()
                .to_string()
                .contains("closing")
        );

        fs::write(&path, "---\nsource: [a\n---\nx\n").unwrap();
        assert!(
            Snapshot::read(&path)
                .unwrap_err()
                .to_string()
                .contains("not YAML")
        );

        fs::write(&path, "---\nsnapshot_kind: binary\nextension: png\n---\n").unwrap();
        assert!(
            Snapshot::read(&path)
                .unwrap_err()
                .to_string()
                .contains("binary")
        );

        // A folder where the file should be: a read error, naming it.
        let err = Snapshot::read(dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::Read { .. }), "{err:?}");

        let blocked = dir.path().join("plain.snap/below.snap");
        let err = Snapshot::new("a", "b").write(&blocked).unwrap_err();
        assert!(err.to_string().contains("below.snap"), "{err}");
    }

    #[test]
    fn reads_the_snapshots_insta_wrote_for_the_default_mappings() {
        let folder = repo_path("snapshots/default-mappings");
        let mut read = 0;
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "snap") {
                continue;
            }
            let snapshot = Snapshot::read(&path).unwrap().unwrap();
            assert_eq!(snapshot.source, "tests/snapshots.rs", "{}", path.display());
            let input = snapshot.input_file.as_deref().unwrap();
            assert!(repo_path(input).is_file(), "{input}");
            assert!(snapshot.contents.contains("--- report ---"));
            assert!(!snapshot.contents.ends_with('\n'));
            // What we write is byte for byte what insta wrote.
            assert_eq!(snapshot.render(), fs::read_to_string(&path).unwrap());
            read += 1;
        }
        assert!(read >= 5, "only {read} snapshots in {}", folder.display());
    }

    #[test]
    fn insta_parses_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ours.snap");
        let ours = sample();
        ours.write(&path).unwrap();

        let theirs = insta::Snapshot::from_file(&path).unwrap();
        let metadata = theirs.metadata();
        assert_eq!(metadata.source(), Some(ours.source.as_str()));
        assert_eq!(metadata.expression(), ours.expression.as_deref());
        assert_eq!(metadata.description(), ours.description.as_deref());
        assert_eq!(metadata.input_file(), ours.input_file.as_deref());
        let info = serde_json::to_value(metadata.private_info().unwrap()).unwrap();
        assert_eq!(Some(info), ours.info);
        let text = theirs.contents().as_text().unwrap().to_string();
        assert_eq!(text, normalize(&ours.contents));
    }

    #[test]
    fn insta_assertions_pass_against_what_we_write_and_fail_on_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let contents = sample().contents;
        Snapshot::new("mappings/orders.yaml", contents.as_str())
            .write(dir.path().join("ours.snap"))
            .unwrap();
        let assert_ours = |value: &str| {
            insta::with_settings!({snapshot_path => dir.path(), prepend_module_to_snapshot => false}, {
                insta::assert_snapshot!("ours", value);
            });
        };
        // Different line endings and trailing whitespace still match, as in `contents_match`.
        assert_ours(&contents);
        assert_ours(&format!("{}\n\n", contents.replace('\n', "\r\n")));

        // `INSTA_UPDATE=always` (`cargo insta test --accept`) or `INSTA_FORCE_PASS` would make
        // insta accept the change instead of failing.
        let accepting = std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "always")
            || std::env::var_os("INSTA_FORCE_PASS").is_some();
        if !accepting {
            let changed = contents.replace("POST", "PATCH");
            let outcome = std::panic::catch_unwind(|| assert_ours(&changed));
            assert!(outcome.is_err(), "insta accepted a changed snapshot");
            // If insta left a pending file, it is the one we would have written.
            if let Some(pending) = Snapshot::read(dir.path().join("ours.snap.new")).unwrap() {
                assert_eq!(pending.contents, changed);
            }
        }
    }

    #[test]
    fn comparison_ignores_metadata_line_endings_and_trailing_whitespace() {
        let a = Snapshot::new("a.yaml", "one\ntwo\n");
        let b = Snapshot {
            expression: Some("other".into()),
            ..Snapshot::new("b.yaml", "one\r\ntwo\r\n\r\n  \t")
        };
        assert!(a.matches(&b));
        assert!(contents_match("one\ntwo", "one\ntwo\n\n"));
        // Trailing whitespace inside, leading whitespace and bare CR still count, as in insta.
        assert!(!contents_match("one \ntwo", "one\ntwo"));
        assert!(!contents_match("\none", "one"));
        assert!(!contents_match("one\rtwo", "one\ntwo"));
        assert_eq!(diff("one\r\ntwo\r\n", "one\ntwo", false), "");
    }

    #[test]
    fn reading_normalises_crlf_files_like_insta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crlf.snap");
        fs::write(&path, "---\r\nsource: a.yaml\r\n---\r\none\r\ntwo\r\n").unwrap();
        let snapshot = Snapshot::read(&path).unwrap().unwrap();
        assert_eq!(snapshot.source, "a.yaml");
        assert_eq!(snapshot.contents, "one\ntwo");
        let theirs = insta::Snapshot::from_file(&path).unwrap();
        assert_eq!(theirs.contents().as_text().unwrap().to_string(), "one\ntwo");
    }

    #[test]
    fn diff_shows_a_changed_property_with_context() {
        let old = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3,\n  \"d\": 4,\n  \"e\": 5,\n  \"f\": 6,\n  \"g\": 7,\n  \"h\": 8\n}\n";
        let new = old.replace("\"e\": 5", "\"e\": 50");
        assert_eq!(
            diff(old, &new, false),
            "@@ -3,7 +3,7 @@\n   \"b\": 2,\n   \"c\": 3,\n   \"d\": 4,\n-  \"e\": 5,\n+  \"e\": 50,\n   \"f\": 6,\n   \"g\": 7,\n   \"h\": 8\n"
        );
        let colored = diff(old, &new, true);
        assert!(colored.contains("\x1b[31m-  \"e\": 5,\x1b[0m"), "{colored}");
        assert!(
            colored.contains("\x1b[32m+  \"e\": 50,\x1b[0m"),
            "{colored}"
        );
        // A line added at the end is just an addition, whatever the final newlines.
        assert_eq!(
            diff("a\nb", "a\nb\nc\n", false),
            "@@ -1,2 +1,3 @@\n a\n b\n+c\n"
        );
    }

    #[test]
    fn diff_of_a_huge_change_is_cut_short() {
        let old: String = (0..300).map(|i| format!("line {i}\n")).collect();
        let new: String = (0..300).map(|i| format!("LINE {i}\n")).collect();
        let out = diff(&old, &new, false);
        let changed = out
            .lines()
            .filter(|l| l.starts_with('-') || l.starts_with('+'))
            .count();
        assert_eq!(changed, 200);
        assert!(
            out.ends_with("… 400 more changed lines\n"),
            "{}",
            &out[out.len() - 80..]
        );
    }

    #[test]
    fn pending_snapshots_go_where_cargo_insta_looks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme@orders.ndjson.snap");
        assert_eq!(
            pending_path(&path),
            dir.path().join("acme@orders.ndjson.snap.new")
        );
        let pending = sample().write_pending(&path).unwrap();
        assert_eq!(pending, pending_path(&path));
        assert_eq!(Snapshot::read(&pending).unwrap(), Some(sample()));
        assert_eq!(
            Snapshot::read(&path).unwrap(),
            None,
            "the accepted file is untouched"
        );
        assert!(Snapshot::remove_pending(&path).unwrap());
        assert!(!Snapshot::remove_pending(&path).unwrap());
        assert!(!pending.exists());

        let err = sample()
            .write_pending(dir.path().join("orders.txt"))
            .unwrap_err();
        assert!(matches!(err, SnapshotError::NotSnapPath { .. }));
        assert!(err.to_string().contains("orders.txt"), "{err}");
    }
}
