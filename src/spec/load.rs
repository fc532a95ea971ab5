//! Reading a mapping set from a folder, or from the copy built into the binary.
//!
//! A set is every `*.yaml` file in one folder plus `settings.yaml` beside them. One bad file must
//! not hide the problems of the others, so the loader parses every file it can and returns what
//! parsed together with a diagnostic for each file that did not.

use super::spanned::parsing;
use super::{MappingSpec, Settings};
use crate::diagnostic::{Diagnostic, Diagnostics, FileId, Files, Position, SourceFile};
use include_dir::{Dir, include_dir};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default mappings, compiled into the binary so `run` works from any folder.
static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/mappings");

/// The sample deliveries the default mappings name as their examples (`../examples/...`).
static BUILTIN_EXAMPLES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/examples");

/// The name of the settings file inside a mapping folder; every other YAML file is a mapping.
pub const SETTINGS_FILE: &str = "settings.yaml";

fn is_settings(file_name: &str) -> bool {
    file_name == SETTINGS_FILE || file_name == "settings.yml"
}

/// A parsed spec with the text it came from and the example deliveries it names.
#[derive(Debug)]
pub struct SpecFile<T> {
    pub source: Arc<SourceFile>,
    pub spec: T,
    pub examples: Vec<Example>,
}

/// A sample delivery named in a spec's `examples:`.
#[derive(Debug)]
pub struct Example {
    pub name: String,
    pub position: Position,
    /// The file's text, or why it could not be read.
    pub text: Result<String, String>,
}

/// Everything in one mapping folder that parsed.
#[derive(Debug)]
pub struct MappingSet {
    pub settings: Option<SpecFile<Settings>>,
    pub mappings: Vec<SpecFile<MappingSpec>>,
    /// Every file read, so that a position names its file.
    pub files: Files,
    /// Problems found while reading and parsing; more are added when the set is compiled.
    pub diagnostics: Diagnostics,
}

/// Where spec files come from.
enum Origin<'a> {
    Folder(&'a Path),
    Builtin,
}

impl Origin<'_> {
    /// The YAML files of the set, sorted by name, as (display name, file name, text).
    fn files(&self) -> Result<Vec<(String, String, String)>, String> {
        let mut files = Vec::new();
        match self {
            Origin::Folder(dir) => {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| format!("cannot read mapping folder {}: {e}", dir.display()))?;
                for entry in entries {
                    let path = entry.map_err(|e| e.to_string())?.path();
                    if !is_yaml(&path) {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
                    files.push((path.display().to_string(), file_name.into_owned(), text));
                }
            }
            Origin::Builtin => {
                for file in BUILTIN.files() {
                    if !is_yaml(file.path()) {
                        continue;
                    }
                    let text = file.contents_utf8().unwrap_or_default().to_owned();
                    let name = file.path().display().to_string();
                    files.push((format!("<builtin>/{name}"), name, text));
                }
            }
        }
        files.sort();
        Ok(files)
    }

    fn read_example(&self, name: &str) -> Result<String, String> {
        match self {
            Origin::Folder(dir) => {
                let path: PathBuf = dir.join(name);
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
            }
            Origin::Builtin => {
                let (dir, path) = match name.strip_prefix("../examples/") {
                    Some(rest) => (&BUILTIN_EXAMPLES, rest),
                    None => (&BUILTIN, name),
                };
                dir.get_file(path)
                    .and_then(|f| f.contents_utf8())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("<builtin>/{name}: no such file"))
            }
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Loads the mapping set in `dir`.
pub fn load_dir(dir: &Path) -> MappingSet {
    load(&Origin::Folder(dir))
}

/// Loads the default mapping set built into the binary.
pub fn load_embedded() -> MappingSet {
    load(&Origin::Builtin)
}

fn load(origin: &Origin<'_>) -> MappingSet {
    let mut set = MappingSet {
        settings: None,
        mappings: Vec::new(),
        files: Files::default(),
        diagnostics: Diagnostics::default(),
    };
    let files = match origin.files() {
        Ok(files) => files,
        Err(message) => {
            let file = Arc::new(SourceFile {
                name: "<mappings>".into(),
                text: String::new(),
            });
            set.diagnostics
                .push(Diagnostic::error(&file, Position::default(), message));
            return set;
        }
    };
    for (display_name, file_name, text) in files {
        let source = Arc::new(SourceFile {
            name: display_name,
            text,
        });
        let id = set.files.add(Arc::clone(&source));
        if is_settings(&file_name) {
            match parse::<Settings>(&source, id) {
                Ok(settings) => {
                    set.settings = Some(SpecFile {
                        source,
                        spec: settings,
                        examples: Vec::new(),
                    })
                }
                Err(d) => set.diagnostics.push(d),
            }
            continue;
        }
        match parse::<MappingSpec>(&source, id) {
            Ok(spec) => {
                let examples = spec
                    .examples
                    .iter()
                    .map(|name| Example {
                        name: name.value.clone(),
                        position: name.at,
                        text: origin.read_example(&name.value),
                    })
                    .collect();
                set.mappings.push(SpecFile {
                    source,
                    spec,
                    examples,
                });
            }
            Err(d) => set.diagnostics.push(d),
        }
    }
    if set.settings.is_none() && !set.diagnostics.has_errors() {
        let file = Arc::new(SourceFile {
            name: match origin {
                Origin::Folder(dir) => dir.join(SETTINGS_FILE).display().to_string(),
                Origin::Builtin => format!("<builtin>/{SETTINGS_FILE}"),
            },
            text: String::new(),
        });
        set.diagnostics.push(Diagnostic::error(
            &file,
            Position::default(),
            "missing settings file: a mapping folder needs settings.yaml (marketplace, currency, phone_region, metrics, consent)",
        ));
    }
    set
}

/// Parses one mapping file on its own (for tests and editors).
pub fn parse_mapping(name: &str, text: &str) -> Result<SpecFile<MappingSpec>, Diagnostic> {
    let source = Arc::new(SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    });
    let spec = parse::<MappingSpec>(&source, FileId(0))?;
    Ok(SpecFile {
        source,
        spec,
        examples: Vec::new(),
    })
}

fn parse<T: DeserializeOwned>(source: &Arc<SourceFile>, id: FileId) -> Result<T, Diagnostic> {
    parsing(id, || serde_saphyr::from_str::<T>(&source.text)).map_err(|err| {
        let position = err.location().map(|l| Position::of(&l)).unwrap_or_default();
        Diagnostic::error(source, position, yaml_message(&err))
    })
}

/// serde-saphyr's message without the location and excerpt it appends: we print our own.
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let full = err.without_snippet().to_string();
    let first = full.lines().next().unwrap_or_default();
    match first.find(" at line ") {
        Some(cut) => first[..cut].to_owned(),
        None => first.to_owned(),
    }
}
