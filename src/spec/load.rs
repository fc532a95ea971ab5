//! Reading a mapping set from a folder, or from the copy built into the binary.
//!
//! A set is every `*.yaml` file in one folder plus `settings.yaml` beside them. One bad file must
//! not hide the problems of the others, so the loader parses every file it can and returns what
//! parsed together with a diagnostic for each file that did not.

use super::Spanned;
use super::overlay::{ClientConfig, OverlaySpec, Removed};
use super::rules;
use super::spanned::parsing;
use super::{BodyNode, MappingSpec, Settings, TestSpec};
use crate::diagnostic::{Diagnostic, Diagnostics, FileId, Files, Position, SourceFile};
use crate::queries::{QUERIES_DIR, QuerySet};
use crate::source::schema::MarketplacerSchema;
use include_dir::{Dir, include_dir};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default mappings, compiled into the binary so `run` works from any folder.
static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/mappings");

/// The sample deliveries the default mappings name as their examples (`../examples/...`).
static BUILTIN_EXAMPLES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/examples");

/// A sample delivery shipped with the binary (`orders.ndjson`), for scaffolding and demos.
pub fn builtin_example(name: &str) -> Option<&'static str> {
    BUILTIN_EXAMPLES
        .get_file(name)
        .and_then(|f| f.contents_utf8())
}

/// The name of the settings file inside a mapping folder; every other YAML file is a mapping.
pub const SETTINGS_FILE: &str = "settings.yaml";

fn is_settings(file_name: &str) -> bool {
    file_name == SETTINGS_FILE || file_name == "settings.yml"
}

/// A parsed spec with the text it came from and the deliveries it names.
#[derive(Debug)]
pub struct SpecFile<T> {
    pub source: Arc<SourceFile>,
    pub spec: T,
    pub examples: Vec<Example>,
    /// The delivery of each of the spec's `tests`, in the same order.
    pub test_deliveries: Vec<Example>,
    /// Overlay files applied on top of `source`, in order.
    pub layers: Vec<Arc<SourceFile>>,
    /// What those overlays removed, and where.
    pub removed: Vec<Removed>,
}

impl<T> SpecFile<T> {
    fn new(source: Arc<SourceFile>, spec: T) -> Self {
        SpecFile {
            source,
            spec,
            examples: Vec::new(),
            test_deliveries: Vec::new(),
            layers: Vec::new(),
            removed: Vec::new(),
        }
    }
}

/// A sample delivery named in a spec's `examples:`, or a test's delivery.
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
    /// The client's `client.yaml`, when the set was loaded for a client.
    pub client: Option<SpecFile<ClientConfig>>,
    /// Every file read, so that a position names its file.
    pub files: Files,
    /// Problems found while reading and parsing; more are added when the set is compiled.
    pub diagnostics: Diagnostics,
    /// Base mappings a client's overlay turned off, and where its `disable: true` is.
    pub disabled: Vec<(String, Position)>,
    /// The webhook queries the mappings' records come from, a client's merged in.
    pub queries: QuerySet,
}

/// A file's text, or where and why it cannot be read.
type FileText = Result<String, (Position, String)>;

/// Where spec files come from.
enum Origin<'a> {
    Folder(&'a Path),
    Builtin,
    /// (file name, text) pairs: [`load_texts`].
    Texts(&'a [(&'a str, &'a str)]),
}

impl Origin<'_> {
    /// The YAML files of the set, sorted by name, as (display name, file name, text or why
    /// it cannot be read). One unreadable file does not hide the others.
    fn files(&self) -> Result<Vec<(String, String, FileText)>, String> {
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
                    let text = match std::fs::read(&path) {
                        Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
                            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                            let good = String::from_utf8_lossy(good);
                            let line = good.matches('\n').count() + 1;
                            let column = good.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
                            (
                                Position::new(line, column),
                                "this file is not UTF-8 text: save it as UTF-8 (the byte here is in another encoding, such as Latin-1 or Windows-1252)".to_owned(),
                            )
                        }),
                        Err(e) => Err((Position::new(1, 1), format!("cannot read this file: {e}"))),
                    };
                    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
                    files.push((path.display().to_string(), file_name.into_owned(), text));
                }
            }
            Origin::Builtin => {
                for file in BUILTIN.files() {
                    if !is_yaml(file.path()) {
                        continue;
                    }
                    let text = Ok(file.contents_utf8().unwrap_or_default().to_owned());
                    let name = file.path().display().to_string();
                    files.push((format!("<builtin>/{name}"), name, text));
                }
            }
            Origin::Texts(texts) => {
                for (name, text) in texts.iter() {
                    files.push((name.to_string(), name.to_string(), Ok(text.to_string())));
                }
            }
        }
        files.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(files)
    }

    fn read_example(&self, name: &str) -> Result<String, String> {
        match self {
            Origin::Folder(dir) => {
                let path: PathBuf = dir.join(name);
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
            }
            // The examples the default mappings name are the ones built in.
            Origin::Builtin | Origin::Texts(_) => {
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

/// `.yaml` or `.yml` in any case: a file named `placed-order.YAML` is the consultant's too,
/// and ignoring it would silently drop its changes.
fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// How many mapping specs (YAML files other than the settings) a folder holds, or the
/// built-in set with `None`; 0 for a folder that cannot be read.
pub fn count_specs(dir: Option<&Path>) -> usize {
    let origin = match dir {
        Some(dir) => Origin::Folder(dir),
        None => Origin::Builtin,
    };
    origin.files().map_or(0, |files| {
        files
            .iter()
            .filter(|(_, file_name, _)| !is_settings(file_name))
            .count()
    })
}

/// Loads the mapping set in `dir`.
pub fn load_dir(dir: &Path) -> MappingSet {
    let mut set = load(&Origin::Folder(dir));
    check_settings(&mut set);
    check_queries(&mut set);
    set
}

/// Loads the default mapping set built into the binary.
pub fn load_embedded() -> MappingSet {
    let mut set = load(&Origin::Builtin);
    check_settings(&mut set);
    check_queries(&mut set);
    set
}

/// The folder of webhook queries that goes with a mapping folder: `queries/` beside it.
pub fn queries_beside(mappings: &Path) -> std::path::PathBuf {
    match mappings.parent() {
        Some(parent) => parent.join(QUERIES_DIR),
        None => Path::new(QUERIES_DIR).to_path_buf(),
    }
}

/// The queries of a base set: `queries/` beside a mapping folder when there is one, else the
/// built-in queries (which the built-in mappings are written against).
fn load_queries(set: &mut MappingSet, origin: &Origin<'_>) {
    let beside = match origin {
        Origin::Folder(dir) => Some(queries_beside(dir)).filter(|q| q.is_dir()),
        Origin::Builtin | Origin::Texts(_) => None,
    };
    let (queries, problems) = match beside {
        Some(dir) => match QuerySet::load_dir(&dir) {
            Ok(loaded) => loaded,
            Err(message) => {
                let file = Arc::new(SourceFile {
                    name: dir.display().to_string(),
                    text: String::new(),
                });
                set.diagnostics
                    .push(Diagnostic::error(&file, Position::default(), message));
                return;
            }
        },
        None => QuerySet::builtin(),
    };
    for problem in &problems {
        set.diagnostics.push(queries.diagnostic(problem));
    }
    set.queries = queries;
}

/// Every query, a client's additions merged in, against Marketplacer's schema.
fn check_queries(set: &mut MappingSet) {
    let schema = MarketplacerSchema::builtin();
    set.queries.simplify(schema);
    for query in set.queries.queries.values() {
        for problem in crate::queries::check::check(query, schema) {
            set.diagnostics.push(set.queries.diagnostic(&problem));
        }
    }
    // `reconcile` puts every webhook query's selection into its own queries: a key two of
    // them select as different fields cannot be put in one. Problems of the webhook queries
    // themselves are reported above, once; the reconciliation's own fields are checked by
    // their tests.
    if set.queries.queries.is_empty() {
        return;
    }
    let (_, conflicts) = crate::queries::reconcile::reconcile_queries(&set.queries, 500);
    for conflict in &conflicts {
        let mut diagnostic = set.queries.diagnostic(conflict);
        diagnostic.message = format!(
            "{} (the reconciliation queries merge every webhook query's selection)",
            diagnostic.message
        );
        set.diagnostics.push(diagnostic);
    }
}

/// Loads a mapping set from texts in memory, as (file name, text) pairs, exactly as
/// [`load_dir`] loads a folder holding those files; an example that is not one of the
/// built-in ones (`../examples/...`) cannot be read. The way in for the fuzz targets
/// (`fuzz/`), which would otherwise write a folder for every input.
#[doc(hidden)]
pub fn load_texts(files: &[(&str, &str)]) -> MappingSet {
    let mut set = load(&Origin::Texts(files));
    check_settings(&mut set);
    set
}

/// The file in a client folder that holds its settings.
pub const CLIENT_FILE: &str = "client.yaml";

/// Loads a client: the base set (a folder, or the built-in defaults), then the client's
/// `client.yaml`, then its overlays and extra mappings from `<client>/mappings/`.
pub fn load_client(base: Option<&Path>, client: &Path) -> MappingSet {
    let mut set = load(&match base {
        Some(dir) => Origin::Folder(dir),
        None => Origin::Builtin,
    });
    finish_client(&mut set, client);
    check_settings(&mut set);
    check_queries(&mut set);
    set
}

/// [`load_client`] after the base set is read.
fn finish_client(set: &mut MappingSet, client: &Path) {
    let config_path = client.join(CLIENT_FILE);
    let text = match std::fs::read_to_string(&config_path) {
        Ok(text) => text,
        Err(e) => {
            let file = Arc::new(SourceFile {
                name: config_path.display().to_string(),
                text: String::new(),
            });
            set.diagnostics.push(Diagnostic::error(
                &file,
                Position::default(),
                format!("cannot read the client's settings: {e} (`marketsync init NAME` creates a client folder)"),
            ));
            return;
        }
    };
    let source = Arc::new(SourceFile {
        name: config_path.display().to_string(),
        text,
    });
    let id = set.files.add(Arc::clone(&source));
    match parse::<ClientConfig>(&source, id) {
        Ok(config) => {
            if let Some(settings) = &mut set.settings {
                config.apply_to(&mut settings.spec);
            }
            set.client = Some(SpecFile::new(source, config));
        }
        Err(d) => set.diagnostics.push(d),
    }
    let overlays = client.join("mappings");
    if overlays.is_dir() {
        add_files(set, &Origin::Folder(&overlays), Layer::Client);
    }
    let queries = client.join(QUERIES_DIR);
    if queries.is_dir() {
        match set.queries.add_client(&queries) {
            Ok(problems) => {
                for problem in &problems {
                    set.diagnostics.push(set.queries.diagnostic(problem));
                }
            }
            Err(message) => set.diagnostics.push(Diagnostic::error(
                &Arc::new(SourceFile {
                    name: queries.display().to_string(),
                    text: String::new(),
                }),
                Position::default(),
                message,
            )),
        }
    }
    if let Some(mut overlay) = set.client.as_ref().and_then(|c| c.spec.profile_overlay()) {
        let client = set.client.as_ref().expect("client loaded");
        let source = Arc::clone(&client.source);
        if overlay.overlay.at.line == 0 {
            // `profile_mapping` left out: point at `profile_attributes:` in client.yaml.
            let first = client.spec.profile_attributes.values().next().map(|p| p.at);
            let at = first.unwrap_or(Position::new(1, 1).in_file(id));
            overlay.overlay.at = rules::key_position(&source.text, "profile_attributes", at);
        }
        let name = overlay.overlay.value.clone();
        if let Some((_, disabled_at)) = set.disabled.iter().find(|(n, _)| *n == name) {
            let disabled_in = set.files.get(disabled_at.file);
            set.diagnostics.push(set.files.error(
                overlay.overlay.at,
                format!(
                    "`profile_attributes` are added to mapping `{name}`, which {}:{} disables: turn it back on, or name another mapping with `profile_mapping`",
                    disabled_in.name, disabled_at.line
                ),
            ));
        } else {
            apply_overlay(set, source, overlay, Vec::new(), Vec::new());
        }
    }
}

/// The value rules of `settings.yaml` and `client.yaml` (see [`super::rules`]), once every
/// mapping is in, since a metric role counts as used when some mapping reads it.
fn check_settings(set: &mut MappingSet) {
    let own = |file: &Arc<SourceFile>| {
        set.settings
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(&s.source, file))
            || set
                .client
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.source, file))
    };
    let roles = rules::metric_roles_read(
        set.files
            .iter()
            .filter(|file| !own(file))
            .map(|file| file.text.as_str()),
    );
    let base_marketplaces: Vec<String> = set
        .settings
        .as_ref()
        .map(|s| s.spec.marketplaces.keys().cloned().collect())
        .unwrap_or_default();
    let sources = [
        set.settings
            .as_ref()
            .map(|s| (rules::Kind::Settings, &s.source)),
        set.client
            .as_ref()
            .map(|c| (rules::Kind::Client, &c.source)),
    ];
    // The mappings whose selections read the consent path, named in its errors.
    let consent_readers: Vec<String> = set
        .mappings
        .iter()
        .filter(|m| {
            m.spec
                .select
                .values()
                .any(|s| s.value.path.contains("settings.consent.path"))
        })
        .map(|m| m.spec.name.value.clone())
        .collect();
    let mut found = Vec::new();
    for (kind, source) in sources.into_iter().flatten() {
        let Some(id) = set.files.id_of(source) else {
            continue;
        };
        // The file already parsed as settings, so it parses as a tree.
        let Ok(tree) = parsing(id, || {
            serde_saphyr::from_str::<Spanned<BodyNode>>(&source.text)
        }) else {
            continue;
        };
        found.extend(rules::check(
            kind,
            &tree,
            &source.text,
            roles.as_ref(),
            &base_marketplaces,
            &consent_readers,
            &set.files,
        ));
    }
    for d in found {
        set.diagnostics.push(d);
    }
}

/// Whether files are a base set or a client's layer on top of one.
#[derive(Clone, Copy, PartialEq)]
enum Layer {
    Base,
    Client,
}

fn load(origin: &Origin<'_>) -> MappingSet {
    let mut set = MappingSet {
        settings: None,
        mappings: Vec::new(),
        client: None,
        files: Files::default(),
        diagnostics: Diagnostics::default(),
        disabled: Vec::new(),
        queries: QuerySet::default(),
    };
    add_files(&mut set, origin, Layer::Base);
    load_queries(&mut set, origin);
    if set.settings.is_none() && !set.diagnostics.has_errors() {
        let file = Arc::new(SourceFile {
            name: match origin {
                Origin::Folder(dir) => dir.join(SETTINGS_FILE).display().to_string(),
                Origin::Builtin => format!("<builtin>/{SETTINGS_FILE}"),
                Origin::Texts(_) => SETTINGS_FILE.to_owned(),
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

/// Reads every YAML file of `origin` into `set`: settings, mappings, and (in a client layer)
/// overlays of the mappings already there.
fn add_files(set: &mut MappingSet, origin: &Origin<'_>, layer: Layer) {
    let files = match origin.files() {
        Ok(files) => files,
        Err(message) => {
            let file = Arc::new(SourceFile {
                name: "<mappings>".into(),
                text: String::new(),
            });
            set.diagnostics
                .push(Diagnostic::error(&file, Position::default(), message));
            return;
        }
    };
    for (display_name, file_name, text) in files {
        let (text, unreadable) = match text {
            Ok(text) => (text, None),
            Err(problem) => (String::new(), Some(problem)),
        };
        let source = Arc::new(SourceFile {
            name: display_name,
            text,
        });
        let id = set.files.add(Arc::clone(&source));
        if let Some((at, message)) = unreadable {
            set.diagnostics
                .push(Diagnostic::error(&source, at.in_file(id), message));
            continue;
        }
        if is_settings(&file_name) {
            if layer == Layer::Client {
                set.diagnostics.push(Diagnostic::error(
                    &source,
                    Position::new(1, 1),
                    format!("a client's settings go in {CLIENT_FILE}, beside its mappings folder, not in {SETTINGS_FILE}"),
                ));
                continue;
            }
            match parse::<Settings>(&source, id) {
                Ok(settings) => set.settings = Some(SpecFile::new(source, settings)),
                Err(d) => set.diagnostics.push(d),
            }
            continue;
        }
        if layer == Layer::Base && is_overlay(&source.text) {
            let at = match parse::<OverlaySpec>(&source, id) {
                Ok(overlay) => overlay.overlay.at,
                Err(d) => {
                    set.diagnostics.push(d);
                    Position::new(1, 1)
                }
            };
            set.diagnostics.push(Diagnostic::error(
                &source,
                at,
                format!(
                    "this is a client's overlay (it has `overlay:`), not a base mapping: {}",
                    check_client_hint(origin)
                ),
            ));
            continue;
        }
        if layer == Layer::Client && is_overlay(&source.text) {
            match parse::<OverlaySpec>(&source, id) {
                Ok(overlay) => {
                    let examples = read_examples(origin, &overlay.examples);
                    let tests = read_test_deliveries(origin, &overlay.tests);
                    apply_overlay(set, source, overlay, examples, tests);
                }
                Err(d) => set.diagnostics.push(d),
            }
            continue;
        }
        match parse::<MappingSpec>(&source, id) {
            Ok(spec) => {
                let mut file = SpecFile::new(source, spec);
                file.examples = read_examples(origin, &file.spec.examples);
                file.test_deliveries = read_test_deliveries(origin, &file.spec.tests);
                set.mappings.push(file);
            }
            Err(d) => set.diagnostics.push(d),
        }
    }
}

/// How to check the client whose overlays were given as a base set (`--mappings
/// clients/acme/mappings`, or `mappings/` found while standing in a client folder).
fn check_client_hint(origin: &Origin<'_>) -> String {
    let Origin::Folder(dir) = origin else {
        return "overlays belong in a client folder, checked with `--client NAME`".into();
    };
    let client = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::env::current_dir()
            .unwrap_or_default()
            .join(dir)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let name = client
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "NAME".into());
    let under_clients = client
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "clients");
    let flag = if under_clients && client.is_relative() {
        format!("--client {name}")
    } else {
        format!("--client {}", client.display())
    };
    format!(
        "a client folder ({CLIENT_FILE} beside mappings/) is checked with `marketsync validate {flag}`, which applies its overlays to the base mappings"
    )
}

/// Whether a file is an overlay: it has a top-level `overlay:` key. A file that is not valid
/// YAML is an overlay when a line begins with that key, so its syntax error is reported by the
/// overlay parser, at its line, rather than as "unknown field `overlay`" by the mapping one.
fn is_overlay(text: &str) -> bool {
    match serde_saphyr::from_str::<IndexMap<String, serde::de::IgnoredAny>>(text) {
        Ok(keys) => keys.contains_key("overlay"),
        Err(_) => text.lines().any(|line| {
            ["overlay:", "\"overlay\":", "'overlay':"]
                .iter()
                .any(|key| line.starts_with(key))
        }),
    }
}

fn apply_overlay(
    set: &mut MappingSet,
    source: Arc<SourceFile>,
    overlay: OverlaySpec,
    examples: Vec<Example>,
    tests: Vec<Example>,
) {
    let name = overlay.overlay.value.clone();
    let Some(index) = set.mappings.iter().position(|m| m.spec.name.value == name) else {
        let known: Vec<&str> = set
            .mappings
            .iter()
            .map(|m| m.spec.name.value.as_str())
            .collect();
        let hint = match rules::did_you_mean(&name, known.iter().copied()) {
            close if !close.is_empty() => close,
            _ => format!("; the base mappings are {}", known.join(", ")),
        };
        set.diagnostics.push(set.files.error(
            overlay.overlay.at,
            format!("`overlay: {name}` names no base mapping{hint}"),
        ));
        return;
    };
    if let Some(at) = overlay.disable {
        set.mappings.remove(index);
        set.disabled.push((name, at));
        return;
    }
    let base = &mut set.mappings[index];
    if !overlay.base_tests {
        base.test_deliveries.clear();
    }
    if !overlay.base_examples {
        base.examples.clear();
    }
    let (problems, removed) = overlay.apply_to(&mut base.spec, &set.files);
    for d in problems {
        set.diagnostics.push(d);
    }
    base.removed.extend(removed);
    base.examples.extend(examples);
    base.test_deliveries.extend(tests);
    base.layers.push(source);
}

fn read_examples(origin: &Origin<'_>, names: &[Spanned<String>]) -> Vec<Example> {
    names
        .iter()
        .map(|name| Example {
            name: name.value.clone(),
            position: name.at,
            text: origin.read_example(&name.value),
        })
        .collect()
}

/// Each test's delivery: a file beside the spec, or the delivery written inline.
fn read_test_deliveries(origin: &Origin<'_>, tests: &[TestSpec]) -> Vec<Example> {
    tests
        .iter()
        .map(|test| {
            let (name, text) = match &test.delivery.value {
                serde_json::Value::String(file) => (file.clone(), origin.read_example(file)),
                inline @ serde_json::Value::Object(_) => {
                    ("(inline)".to_owned(), Ok(inline.to_string()))
                }
                _ => (
                    "(invalid)".to_owned(),
                    Err("`delivery` must be a file name or a delivery written inline".to_owned()),
                ),
            };
            Example {
                name,
                position: test.delivery.at,
                text,
            }
        })
        .collect()
}

/// Parses one mapping file on its own (for tests and editors).
pub fn parse_mapping(name: &str, text: &str) -> Result<SpecFile<MappingSpec>, Diagnostic> {
    let source = Arc::new(SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    });
    let spec = parse::<MappingSpec>(&source, FileId(0))?;
    Ok(SpecFile::new(source, spec))
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
    let message = match first.find(" at line ") {
        Some(cut) => &first[..cut],
        None => first,
    };
    consultant_wording(message)
}

/// serde-saphyr's wording where it speaks of its own options and types, in the consultant's
/// terms: what is wrong in the file and what to write instead.
fn consultant_wording(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("`{key}` is written twice in the same map: keep one");
    }
    if message.starts_with("budget breached") {
        return "this file expands to too many values (anchors `&name` and aliases `*name` repeated inside each other): write the values out".into();
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once("`, expected ")
    {
        let keys = expected.strip_prefix("one of ").unwrap_or(expected);
        let keys = keys.split(", ").map(|k| k.trim_matches('`'));
        return format!("{message}{}", rules::did_you_mean(key, keys));
    }
    if let Some(rest) = message.strip_prefix("non-finite float ") {
        let value = rest.split(" rejected").next().unwrap_or(rest);
        return format!(
            "{value} is not a number a request can carry: quote it (\"{}\") for text, or write a number",
            value.trim_matches('`')
        );
    }
    message.to_owned()
}
