//! The webhook queries: what Marketplacer puts in each record, kept beside the mappings.
//!
//! A Marketplacer webhook sends exactly the fields its GraphQL query selects, and the operator
//! pastes that query into the webhook's setup. A mapping reading a field the query never
//! selects gets nothing on every delivery, and the attribute silently never reaches Klaviyo. So
//! the queries are configuration like the mappings: a `queries/` folder beside `mappings/`
//! (built into the binary for the defaults), one document per webhook type, checked against
//! Marketplacer's schema ([`check`]) and against every path a mapping reads ([`coverage`]).
//!
//! A client adds fields to a base query without copying it (`clients/NAME/queries/`): its
//! documents are merged into the base by selection set, as overlays merge into mappings, so
//! fixes to the base still reach it. What `marketsync queries` prints is the merged query,
//! ready to paste into Marketplacer.

pub mod backfill;
pub mod check;
pub mod coverage;
mod document;
pub mod live;
pub mod reconcile;

use crate::diagnostic::{Diagnostic, Position, Severity, SourceFile};
use crate::source::schema::{MarketplacerSchema, Shape};
use include_dir::{Dir, include_dir};
use indexmap::IndexMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use coverage::{Coverage, NotSelected, Unread};

/// The default queries, compiled into the binary with the default mappings.
static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/queries");

/// The folder holding the queries, beside the mapping folder (and in a client folder).
pub const QUERIES_DIR: &str = "queries";

/// A place in a query file: which file of its [`QuerySet`], and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub file: usize,
    pub offset: usize,
}

/// What a selection set selects: fields by response key (the alias when there is one, as the
/// record carries them), and the parts that apply only to some type (`... on Invoice`).
#[derive(Debug, Clone, Default)]
pub struct SelectionSet {
    pub fields: IndexMap<String, Field>,
    pub conditions: IndexMap<String, SelectionSet>,
}

/// One selected field.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub alias: Option<String>,
    /// Argument names and values as written (`separator`, `" > "`).
    pub arguments: Vec<(String, String)>,
    pub at: Span,
    pub selection: SelectionSet,
    /// Whether braces were written after the field (an object field needs them).
    pub has_selection: bool,
    /// A `# deprecated: why` comment on the line above: the field is kept knowingly, so its
    /// deprecation is not warned about on every run.
    pub deprecation_noted: bool,
}

impl Field {
    /// The key the field has in the record.
    pub fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

impl SelectionSet {
    /// Adds a field, merging it with one already selected under the same key.
    fn add_field(&mut self, field: Field) -> Result<(), QueryProblem> {
        match self.fields.get_mut(field.key()) {
            None => {
                self.fields.insert(field.key().to_owned(), field);
                Ok(())
            }
            Some(existing) => {
                if existing.name != field.name || existing.arguments != field.arguments {
                    return Err(QueryProblem::new(
                        ProblemKind::Conflict {
                            key: field.key().to_owned(),
                            first: existing.written(),
                            second: field.written(),
                        },
                        field.at,
                    ));
                }
                existing.has_selection |= field.has_selection;
                let problems = existing.selection.merge(field.selection);
                match problems.into_iter().next() {
                    Some(problem) => Err(problem),
                    None => Ok(()),
                }
            }
        }
    }

    /// Adds everything `other` selects; what conflicts (one key, two fields) is returned.
    pub fn merge(&mut self, other: SelectionSet) -> Vec<QueryProblem> {
        let mut problems = Vec::new();
        for (_, field) in other.fields {
            if let Err(problem) = self.add_field(field) {
                problems.push(problem);
            }
        }
        for (type_name, part) in other.conditions {
            problems.extend(self.conditions.entry(type_name).or_default().merge(part));
        }
        problems
    }

    /// A field by response key, here or under any type condition (a record is of one type, and
    /// a path cannot tell which).
    pub fn find(&self, key: &str) -> Option<&Field> {
        self.fields
            .get(key)
            .or_else(|| self.conditions.values().find_map(|c| c.find(key)))
    }

    /// Whether the set selects nothing.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.conditions.values().all(SelectionSet::is_empty)
    }

    fn render(&self, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        for field in self.fields.values() {
            out.push_str(&pad);
            out.push_str(&field.written());
            if field.selection.is_empty() {
                out.push('\n');
            } else {
                out.push_str(" {\n");
                field.selection.render(indent + 1, out);
                out.push_str(&pad);
                out.push_str("}\n");
            }
        }
        for (type_name, part) in &self.conditions {
            out.push_str(&format!("{pad}... on {type_name} {{\n"));
            part.render(indent + 1, out);
            out.push_str(&pad);
            out.push_str("}\n");
        }
    }
}

impl Field {
    /// `alias: name(argument: value)`, as a query writes it.
    fn written(&self) -> String {
        let mut text = match &self.alias {
            Some(alias) => format!("{alias}: {}", self.name),
            None => self.name.clone(),
        };
        if !self.arguments.is_empty() {
            let arguments: Vec<String> = self
                .arguments
                .iter()
                .map(|(name, value)| format!("{name}: {value}"))
                .collect();
            text.push_str(&format!("({})", arguments.join(", ")));
        }
        text
    }
}

/// The query of one webhook type: `node(id: $id) { ... on Type { … } }`.
#[derive(Debug, Clone)]
pub struct Query {
    /// The webhook's record type (`Invoice`).
    pub type_name: String,
    /// `query InvoiceWebhook($id: ID!)`.
    pub header: String,
    /// The operation's selection, from `node` down.
    pub selection: SelectionSet,
    /// The file the query was first read from (a client's additions come from others).
    pub file: usize,
    pub at: Span,
}

impl Query {
    /// What the record holds: the selection of `node`, with its type condition merged in.
    pub fn record(&self) -> SelectionSet {
        let mut record = SelectionSet::default();
        if let Some(node) = self.selection.fields.get("node") {
            record.fields = node.selection.fields.clone();
            for (type_name, part) in &node.selection.conditions {
                if *type_name == self.type_name {
                    record.merge(part.clone());
                } else {
                    record.conditions.insert(type_name.clone(), part.clone());
                }
            }
        }
        record
    }

    /// The query as pasted into Marketplacer's webhook setup.
    pub fn render(&self) -> String {
        let mut out = format!("{} {{\n", self.header);
        self.selection.render(1, &mut out);
        out.push_str("}\n");
        out
    }
}

/// Every webhook query of a configuration, with the files they were read from.
#[derive(Debug, Clone, Default)]
pub struct QuerySet {
    pub files: Vec<Arc<SourceFile>>,
    /// By record type, in file order.
    pub queries: IndexMap<String, Query>,
}

/// Something wrong in a query file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryProblem {
    pub kind: ProblemKind,
    pub at: Span,
}

impl QueryProblem {
    pub fn new(kind: ProblemKind, at: Span) -> Self {
        QueryProblem { kind, at }
    }

    pub fn severity(&self) -> Severity {
        match self.kind {
            ProblemKind::Deprecated { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error("{0}")]
    Syntax(String),
    #[error(
        "only queries belong in a query file (no mutations, subscriptions or type definitions)"
    )]
    NotAQuery,
    #[error(
        "a webhook query reads one record: `query($id: ID!) {{ node(id: $id) {{ __typename ... on TYPE {{ … }} }} }}`"
    )]
    NotWebhookQuery,
    #[error("{type_name} already has its query in {first}: one query per webhook type")]
    DuplicateType { type_name: String, first: String },
    #[error("fragment `{0}` is defined twice")]
    DuplicateFragment(String),
    #[error("no fragment `{0}` is defined in this file")]
    UnknownFragment(String),
    #[error("fragment `{0}` spreads itself")]
    FragmentCycle(String),
    #[error("`{key}` is selected as `{first}` and as `{second}`: give one of them another alias")]
    Conflict {
        key: String,
        first: String,
        second: String,
    },
    #[error("`{on_type}` has no field `{field}`{}", hint(suggestion))]
    UnknownField {
        field: String,
        on_type: String,
        suggestion: Option<String>,
    },
    #[error(
        "`{on_type}.{field}` has no argument `{argument}`{}",
        known_list(known)
    )]
    UnknownArgument {
        field: String,
        on_type: String,
        argument: String,
        known: Vec<String>,
    },
    #[error("`{on_type}.{field}` needs argument `{argument}: {argument_type}`")]
    MissingArgument {
        field: String,
        on_type: String,
        argument: String,
        argument_type: String,
    },
    #[error("`{on_type}.{field}` is deprecated: {reason}")]
    Deprecated {
        field: String,
        on_type: String,
        reason: String,
    },
    #[error("`{field}` is a `{type_name}`: select its fields in braces")]
    NeedsSelection { field: String, type_name: String },
    #[error("`{field}` is a `{type_name}`, which has no fields to select")]
    LeafSelection { field: String, type_name: String },
    #[error("no type `{0}` in the Marketplacer schema")]
    UnknownType(String),
    #[error("a `{on_type}` is never a `{condition}`")]
    ImpossibleCondition { condition: String, on_type: String },
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

fn known_list(known: &[String]) -> String {
    match known.is_empty() {
        true => " (it takes none)".into(),
        false => format!(" (it takes {})", known.join(", ")),
    }
}

impl fmt::Display for QueryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    Position::new(line, column)
}

impl QuerySet {
    /// The default queries built into the binary.
    pub fn builtin() -> (QuerySet, Vec<QueryProblem>) {
        let mut files: Vec<(String, String)> = BUILTIN
            .files()
            .filter(|f| is_graphql(f.path()))
            .map(|f| {
                (
                    format!("<builtin>/{QUERIES_DIR}/{}", f.path().display()),
                    f.contents_utf8().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        files.sort();
        let mut set = QuerySet::default();
        let problems = set.add(files, false);
        (set, problems)
    }

    /// The queries in `dir` (every `*.graphql` file), or why the folder cannot be read.
    pub fn load_dir(dir: &Path) -> Result<(QuerySet, Vec<QueryProblem>), String> {
        let mut set = QuerySet::default();
        let problems = set.add(read_folder(dir)?, false);
        Ok((set, problems))
    }

    /// Merges a client's queries (`dir`) into the base ones, selection set by selection set.
    pub fn add_client(&mut self, dir: &Path) -> Result<Vec<QueryProblem>, String> {
        Ok(self.add(read_folder(dir)?, true))
    }

    /// Reads documents into the set; with `merge`, a query for a type the set has already is
    /// added to it rather than reported as a second query.
    fn add(&mut self, files: Vec<(String, String)>, merge: bool) -> Vec<QueryProblem> {
        let mut problems = Vec::new();
        for (name, text) in files {
            let file = self.files.len();
            let (operations, found) = document::parse(file, &text);
            self.files.push(Arc::new(SourceFile { name, text }));
            problems.extend(found);
            for operation in operations {
                let Some(type_name) = record_type(&operation.selection) else {
                    problems.push(QueryProblem::new(
                        ProblemKind::NotWebhookQuery,
                        operation.at,
                    ));
                    continue;
                };
                match self.queries.get_mut(&type_name) {
                    Some(base) if merge => {
                        problems.extend(base.selection.merge(operation.selection))
                    }
                    Some(base) => problems.push(QueryProblem::new(
                        ProblemKind::DuplicateType {
                            type_name,
                            first: self.files[base.file].name.clone(),
                        },
                        operation.at,
                    )),
                    None => {
                        let query = Query {
                            type_name: type_name.clone(),
                            header: operation.header,
                            selection: operation.selection,
                            file,
                            at: operation.at,
                        };
                        self.queries.insert(type_name, query);
                    }
                }
            }
        }
        problems
    }

    /// Writes a fragment on a field's own type (`shippingAddress { ...AddressFields }`) as the
    /// field's plain selection, so the printed query has a type condition only where the value
    /// can be of several types.
    pub fn simplify(&mut self, schema: &MarketplacerSchema) {
        fn simplify_set(set: &mut SelectionSet, on_type: &str, schema: &MarketplacerSchema) {
            for field in set.fields.values_mut() {
                let Shape::Typed { name, .. } = schema.field_shape(on_type, &field.name) else {
                    continue;
                };
                if let Some(own) = field.selection.conditions.shift_remove(&name) {
                    // Merging what merged once already cannot conflict.
                    let _ = field.selection.merge(own);
                }
                simplify_set(&mut field.selection, &name, schema);
            }
            for (type_name, part) in set.conditions.iter_mut() {
                simplify_set(part, type_name, schema);
            }
        }
        for query in self.queries.values_mut() {
            simplify_set(&mut query.selection, "Query", schema);
        }
    }

    /// The query of a record type.
    pub fn query(&self, type_name: &str) -> Option<&Query> {
        self.queries.get(type_name)
    }

    /// The file a query was first read from.
    pub fn file_of(&self, query: &Query) -> &Arc<SourceFile> {
        &self.files[query.file]
    }

    /// A problem as a diagnostic, at its line and column in its file.
    pub fn diagnostic(&self, problem: &QueryProblem) -> Diagnostic {
        let file = &self.files[problem.at.file];
        let position = line_column(&file.text, problem.at.offset);
        let diagnostic = Diagnostic::error(file, position, problem.to_string());
        Diagnostic {
            severity: problem.severity(),
            ..diagnostic
        }
    }
}

/// The type a webhook query reads: the one type condition directly under `node`.
fn record_type(selection: &SelectionSet) -> Option<String> {
    let node = selection.fields.get("node")?;
    if selection.fields.len() != 1 || node.name != "node" || node.selection.conditions.len() != 1 {
        return None;
    }
    node.selection.conditions.keys().next().cloned()
}

fn is_graphql(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("graphql") || e.eq_ignore_ascii_case("gql"))
}

/// Every query file of a folder, sorted by name, as (display name, text).
fn read_folder(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read query folder {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !is_graphql(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        files.push((path.display().to_string(), text));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> (QuerySet, Vec<QueryProblem>) {
        let mut set = QuerySet::default();
        let files = files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        let problems = set.add(files, false);
        (set, problems)
    }

    fn rendered(set: &QuerySet, problems: &[QueryProblem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| set.diagnostic(p).to_string())
            .collect()
    }

    #[test]
    fn the_builtin_queries_are_valid_and_read_the_three_webhook_types() {
        let (set, problems) = QuerySet::builtin();
        assert!(problems.is_empty(), "{problems:?}");
        let types: Vec<&str> = set.queries.keys().map(String::as_str).collect();
        assert_eq!(types, ["Invoice", "RefundRequest", "Shipment"]);
        for query in set.queries.values() {
            let problems = check::check(query, MarketplacerSchema::builtin());
            assert!(problems.is_empty(), "{:?}", rendered(&set, &problems));
        }
    }

    #[test]
    fn schema_problems_are_at_their_line_and_column() {
        let text = "query($id: ID!) {\n  node(id: $id) {\n    ... on Invoice {\n      legacyID\n      order { lineItems(frist: 2) { nodes { id } } }\n      seller\n      paidAt { day }\n      lineItems { treeName: variantName }\n    }\n  }\n}\n";
        let (set, problems) = load(&[("q.graphql", text)]);
        assert!(problems.is_empty(), "{problems:?}");
        let problems = check::check(&set.queries["Invoice"], MarketplacerSchema::builtin());
        assert_eq!(
            rendered(&set, &problems),
            [
                "q.graphql:4:7: error: `Invoice` has no field `legacyID` (did you mean `legacyId`?)",
                "q.graphql:5:15: error: `Order.lineItems` has no argument `frist` (it takes after, before, first, last)",
                "q.graphql:6:7: error: `seller` is a `Seller`: select its fields in braces",
                "q.graphql:7:7: error: `paidAt` is a `ISO8601DateTime`, which has no fields to select",
            ]
        );
        let missing = "query { node { ... on Invoice { id } } }";
        let (set, _) = load(&[("q.graphql", missing)]);
        let problems = check::check(&set.queries["Invoice"], MarketplacerSchema::builtin());
        assert_eq!(
            rendered(&set, &problems),
            ["q.graphql:1:9: error: `Query.node` needs argument `id: ID!`"]
        );
    }

    #[test]
    fn a_deprecated_field_warns_unless_a_comment_says_why_it_is_kept() {
        let text = "query($id: ID!) {\n  node(id: $id) {\n    ... on Invoice {\n      lineItems { variant { id } }\n      # deprecated: no copied value has it\n      lineItems { advert { id } }\n    }\n  }\n}\n";
        let (set, _) = load(&[("q.graphql", text)]);
        let problems = check::check(&set.queries["Invoice"], MarketplacerSchema::builtin());
        let rendered = rendered(&set, &problems);
        assert_eq!(rendered.len(), 1, "{rendered:?}");
        assert!(
            rendered[0].starts_with("q.graphql:4:19: warning: `LineItem.variant` is deprecated: "),
            "{rendered:?}"
        );
    }

    #[test]
    fn documents_that_are_not_one_webhook_query_are_refused() {
        let (set, problems) = load(&[
            (
                "a.graphql",
                "query { node(id: $id) { ... on Invoice { id } } }",
            ),
            (
                "b.graphql",
                "query { node(id: $id) { ... on Invoice { id } } }",
            ),
            ("c.graphql", "query { updatedOrders { nodes { id } } }"),
            ("d.graphql", "query { node(id: $id) { ...F } }"),
            (
                "e.graphql",
                "query { node(id: $id) { ... on Invoice { id: legacyId id } } ",
            ),
        ]);
        assert_eq!(
            rendered(&set, &problems),
            [
                "b.graphql:1:1: error: Invoice already has its query in a.graphql: one query per webhook type",
                "c.graphql:1:1: error: a webhook query reads one record: `query($id: ID!) { node(id: $id) { __typename ... on TYPE { … } } }`",
                "d.graphql:1:25: error: no fragment `F` is defined in this file",
                "d.graphql:1:1: error: a webhook query reads one record: `query($id: ID!) { node(id: $id) { __typename ... on TYPE { … } } }`",
                "e.graphql:1:62: error: expected R_CURLY, got EOF",
            ]
        );
        let (set, problems) = load(&[(
            "f.graphql",
            "query { node(id: $id) { ... on Invoice { id: legacyId id } } }",
        )]);
        assert_eq!(
            rendered(&set, &problems),
            [
                "f.graphql:1:55: error: `id` is selected as `id: legacyId` and as `id`: give one of them another alias"
            ]
        );
    }

    #[test]
    fn a_client_query_merges_into_the_base_and_prints_ready_to_paste() {
        let (mut set, _) = load(&[(
            "base.graphql",
            "query W($id: ID!) { node(id: $id) { __typename ... on Invoice { legacyId order { id } } } }",
        )]);
        let problems = set.add(
            vec![(
                "client.graphql".into(),
                "query { node(id: $id) { ... on Invoice { order { companyName id } } } }".into(),
            )],
            true,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            set.queries["Invoice"].render(),
            "query W($id: ID!) {\n  node(id: $id) {\n    __typename\n    ... on Invoice {\n      legacyId\n      order {\n        id\n        companyName\n      }\n    }\n  }\n}\n"
        );
        let record = set.queries["Invoice"].record();
        let company = record
            .find("order")
            .unwrap()
            .selection
            .find("companyName")
            .unwrap();
        assert_eq!(set.files[company.at.file].name, "client.graphql");
    }

    #[test]
    fn a_comment_only_document_adds_nothing() {
        let (set, problems) = load(&[("c.graphql", "# nothing yet\n# query { }\n")]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(set.queries.is_empty());
    }
}
