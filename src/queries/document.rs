//! A webhook query's text into a selection tree.
//!
//! Marketplacer sends what the query selects, under the names the query gives (aliases), and a
//! fragment is only a way of writing part of a selection once. So the tree keeps response keys,
//! inlines fragment spreads, and keeps type conditions (`... on Advert`) apart only because
//! GraphQL needs them written back when the query is printed.

use super::{Field, ProblemKind, QueryProblem, SelectionSet, Span};
use apollo_parser::Parser;
use apollo_parser::cst::{self, CstNode};
use indexmap::IndexMap;

/// One operation of a document, its fragments inlined.
#[derive(Debug)]
pub struct Operation {
    /// `query InvoiceWebhook($id: ID!)`, as written (whitespace collapsed).
    pub header: String,
    pub selection: SelectionSet,
    pub at: Span,
}

/// The operations of one document, and what was wrong in it.
pub fn parse(file: usize, text: &str) -> (Vec<Operation>, Vec<QueryProblem>) {
    // A file of comments only (a client's example, not yet used) adds nothing; GraphQL itself
    // calls an empty document an error.
    let blank = |line: &str| line.trim().is_empty() || line.trim_start().starts_with('#');
    if text.lines().all(blank) {
        return (Vec::new(), Vec::new());
    }
    let tree = Parser::new(text).parse();
    let mut problems: Vec<QueryProblem> = tree
        .errors()
        .map(|e| {
            QueryProblem::new(
                ProblemKind::Syntax(e.message().to_owned()),
                span(file, e.index()),
            )
        })
        .collect();
    if !problems.is_empty() {
        return (Vec::new(), problems);
    }
    let document = tree.document();
    let mut fragments: IndexMap<String, cst::FragmentDefinition> = IndexMap::new();
    for definition in document.definitions() {
        if let cst::Definition::FragmentDefinition(fragment) = definition {
            let name = fragment
                .fragment_name()
                .and_then(|n| n.name())
                .map(|n| n.text().to_string())
                .unwrap_or_default();
            if fragments.insert(name.clone(), fragment.clone()).is_some() {
                problems.push(QueryProblem::new(
                    ProblemKind::DuplicateFragment(name),
                    at(file, fragment.syntax()),
                ));
            }
        }
    }
    let reader = Reader {
        file,
        text,
        fragments,
    };
    let mut operations = Vec::new();
    for definition in document.definitions() {
        match definition {
            cst::Definition::OperationDefinition(operation) => {
                let Some(set) = operation.selection_set() else {
                    continue;
                };
                let start = usize::from(operation.syntax().text_range().start());
                let body = usize::from(set.syntax().text_range().start());
                let header = text[start..body]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut selection = SelectionSet::default();
                reader.read(&set, &mut selection, &mut Vec::new(), &mut problems);
                operations.push(Operation {
                    header,
                    selection,
                    at: at(file, operation.syntax()),
                });
            }
            cst::Definition::FragmentDefinition(_) => {}
            other => problems.push(QueryProblem::new(
                ProblemKind::NotAQuery,
                at(file, other.syntax()),
            )),
        }
    }
    (operations, problems)
}

fn span(file: usize, offset: usize) -> Span {
    Span { file, offset }
}

fn at(file: usize, node: &apollo_parser::SyntaxNode) -> Span {
    span(file, usize::from(node.text_range().start()))
}

struct Reader<'t> {
    file: usize,
    text: &'t str,
    fragments: IndexMap<String, cst::FragmentDefinition>,
}

impl Reader<'_> {
    /// Whether the comment block right above `offset` has a `# deprecated: why` line.
    fn deprecation_noted(&self, offset: usize) -> bool {
        let line_start = self.text[..offset].rfind('\n').unwrap_or(0);
        self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim_start)
            .take_while(|line| line.starts_with('#'))
            .any(|line| line.starts_with("# deprecated:"))
    }

    /// Adds the selections of `set` to `into`; `spreading` holds the fragments being inlined,
    /// so a fragment that spreads itself is reported instead of followed forever.
    fn read(
        &self,
        set: &cst::SelectionSet,
        into: &mut SelectionSet,
        spreading: &mut Vec<String>,
        problems: &mut Vec<QueryProblem>,
    ) {
        for selection in set.selections() {
            match selection {
                cst::Selection::Field(field) => {
                    let name = name_text(field.name());
                    let alias = field.alias().map(|a| name_text(a.name()));
                    let arguments = field
                        .arguments()
                        .iter()
                        .flat_map(|a| a.arguments())
                        .map(|argument| {
                            let value = argument
                                .value()
                                .map(|v| v.syntax().text().to_string())
                                .unwrap_or_default();
                            (name_text(argument.name()), value)
                        })
                        .collect();
                    let mut child = SelectionSet::default();
                    if let Some(set) = field.selection_set() {
                        self.read(&set, &mut child, spreading, problems);
                    }
                    let start = usize::from(field.syntax().text_range().start());
                    let new = Field {
                        deprecation_noted: self.deprecation_noted(start),
                        name,
                        alias,
                        arguments,
                        at: at(self.file, field.syntax()),
                        selection: child,
                        has_selection: field.selection_set().is_some(),
                    };
                    if let Err(problem) = into.add_field(new) {
                        problems.push(problem);
                    }
                }
                cst::Selection::InlineFragment(fragment) => {
                    let condition = fragment
                        .type_condition()
                        .and_then(|c| c.named_type())
                        .map(|t| name_text(t.name()));
                    let Some(set) = fragment.selection_set() else {
                        continue;
                    };
                    let target = match condition {
                        Some(type_name) => into.conditions.entry(type_name).or_default(),
                        None => &mut *into,
                    };
                    let mut part = SelectionSet::default();
                    self.read(&set, &mut part, spreading, problems);
                    problems.extend(target.merge(part));
                }
                cst::Selection::FragmentSpread(spread) => {
                    let name = spread
                        .fragment_name()
                        .map(|n| name_text(n.name()))
                        .unwrap_or_default();
                    let Some(fragment) = self.fragments.get(&name) else {
                        problems.push(QueryProblem::new(
                            ProblemKind::UnknownFragment(name),
                            at(self.file, spread.syntax()),
                        ));
                        continue;
                    };
                    if spreading.contains(&name) {
                        problems.push(QueryProblem::new(
                            ProblemKind::FragmentCycle(name),
                            at(self.file, spread.syntax()),
                        ));
                        continue;
                    }
                    let condition = fragment
                        .type_condition()
                        .and_then(|c| c.named_type())
                        .map(|t| name_text(t.name()))
                        .unwrap_or_default();
                    let Some(set) = fragment.selection_set() else {
                        continue;
                    };
                    spreading.push(name);
                    let mut part = SelectionSet::default();
                    self.read(&set, &mut part, spreading, problems);
                    spreading.pop();
                    problems.extend(into.conditions.entry(condition).or_default().merge(part));
                }
            }
        }
    }
}

fn name_text(name: Option<cst::Name>) -> String {
    name.map(|n| n.text().to_string()).unwrap_or_default()
}
