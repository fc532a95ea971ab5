//! Whether a webhook's query selects what a mapping's paths read, and what it selects for
//! nothing.
//!
//! The schema check ([`crate::source::schema`]) says a path could match some Marketplacer
//! record; this says it can match the record the configured query actually produces. Paths are
//! followed through the query's selection set by response key (so aliases are what a path
//! names), into connections' `nodes` and `edges` like any other field, through lists by index,
//! wildcard, slice or `[?…]` filter (whose own paths are followed too), and through type
//! conditions and fragments, which a path cannot tell apart. What cannot be followed
//! (descendants `..`, a wildcard over an object, anything below a scalar) is accepted and
//! counts as reading everything below it, so the check never rejects a path that could work.
//!
//! Every field a path reaches is remembered, so [`Coverage::unread`] can list what the query
//! selects that no mapping reads: each costs Marketplacer work on every event.

use super::{Field, QuerySet, SelectionSet, line_column};
use crate::diagnostic::SourceFile;
use crate::source::schema::{MarketplacerSchema, Shape, locate};
use indexmap::IndexMap;
use jsonpath_rust::parser::model::{
    Comparable, Filter, FilterAtom, FnArg, JpQuery, Segment, Selector, SingularQuery,
    SingularQuerySegment, Test, TestFunction,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// What each webhook type's record holds, by type: the selection of its query's `node`.
#[derive(Debug)]
pub struct Records {
    by_type: IndexMap<String, (SelectionSet, String)>,
    files: Vec<Arc<SourceFile>>,
}

impl QuerySet {
    /// The record each query produces, for [`Coverage`].
    pub fn records(&self) -> Records {
        let by_type = self
            .queries
            .iter()
            .map(|(type_name, query)| {
                let file = self.files[query.file].name.clone();
                (type_name.clone(), (query.record(), file))
            })
            .collect();
        Records {
            by_type,
            files: self.files.clone(),
        }
    }
}

/// A path the record cannot carry, because the query does not select a field on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSelected {
    /// The path as written.
    pub path: String,
    /// The response key missing from the query.
    pub field: String,
    /// The keys of the selection it belongs under; empty for the record's own fields.
    pub parent: Vec<String>,
    /// The record type whose query it is.
    pub type_name: String,
    /// The query file to add it to.
    pub query_file: String,
    /// 1-based character offset of `field` in `path`.
    pub column: usize,
}

impl fmt::Display for NotSelected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = match self.parent.is_empty() {
            true => format!("... on {}", self.type_name),
            false => self.parent.join("."),
        };
        write!(
            f,
            "{} is not selected by {}; add \"{}\" under \"{parent}\"",
            self.path, self.query_file, self.field
        )?;
        if self.query_file.starts_with("<builtin>/") {
            // Built into the binary: the fix goes in a file the consultant owns.
            write!(
                f,
                " (in clients/NAME/queries/, or in a copy of the built-in queries in queries/ beside the mapping folder)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for NotSelected {}

/// A field the query selects and no mapping reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub type_name: String,
    /// The file the field is selected in, and where.
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Response keys from the record down, `order.externalIds`.
    pub keys: Vec<String>,
}

impl fmt::Display for Unread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: the {} query selects `{}`, which no mapping reads",
            self.file,
            self.line,
            self.column,
            self.type_name,
            self.keys.join(".")
        )
    }
}

/// Where a path has got to in a record.
#[derive(Debug, Clone)]
pub enum Cursor<'a> {
    /// Values of this selection (a list of them when `shape` says so).
    At {
        set: &'a SelectionSet,
        keys: Vec<String>,
        shape: Shape,
    },
    /// A scalar, or something the check cannot follow: anything below is accepted.
    Anything,
}

impl Cursor<'_> {
    /// What a `many: true` selection yields: a list of what its path reached.
    pub fn into_list(self) -> Self {
        match self {
            Cursor::At { set, keys, shape } => Cursor::At {
                set,
                keys,
                shape: shape.into_list(),
            },
            other => other,
        }
    }
}

/// The fields each type's paths reached, and the subtrees they read whole.
#[derive(Debug, Default)]
struct Reads {
    reached: BTreeSet<Vec<String>>,
    whole: BTreeSet<Vec<String>>,
}

/// Paths checked against the records of a query set, remembering what they read.
pub struct Coverage<'a> {
    records: &'a Records,
    schema: &'a MarketplacerSchema,
    reads: RefCell<BTreeMap<String, Reads>>,
}

/// A walk that stopped at a field the query does not select.
struct Miss {
    field: String,
    parent: Vec<String>,
}

impl<'a> Coverage<'a> {
    pub fn new(records: &'a Records, schema: &'a MarketplacerSchema) -> Self {
        Coverage {
            records,
            schema,
            reads: RefCell::default(),
        }
    }

    /// The whole record of a type, or `None` when no query produces that type.
    pub fn root(&self, type_name: &str) -> Option<Cursor<'a>> {
        let (set, _) = self.records.by_type.get(type_name)?;
        Some(Cursor::At {
            set,
            keys: Vec::new(),
            shape: Shape::named(type_name),
        })
    }

    /// Follows `query` from `start` in the record of `type_name`; what it reaches, or the first
    /// field the query would need to select.
    pub fn check(
        &self,
        type_name: &str,
        start: &Cursor<'a>,
        query: &JpQuery,
        text: &str,
    ) -> Result<Cursor<'a>, Box<NotSelected>> {
        let Some(root) = self.root(type_name) else {
            return Ok(Cursor::Anything);
        };
        let walk = Walk {
            coverage: self,
            type_name,
            root: &root,
        };
        let mut cursor = start.clone();
        for (index, segment) in query.segments.iter().enumerate() {
            cursor = walk.segment(&cursor, segment).map_err(|miss| {
                Box::new(NotSelected {
                    path: text.to_owned(),
                    column: locate::column(text, index, &miss.field),
                    field: miss.field,
                    parent: miss.parent,
                    type_name: type_name.to_owned(),
                    query_file: self.records.by_type[type_name].1.clone(),
                })
            })?;
        }
        // A path that ends at an object hands all of it on (to templates, to `from:`).
        walk.read_whole(&cursor);
        Ok(cursor)
    }

    /// What the queries select that no checked path reads, the highest unread field of each
    /// branch, in query order. `__typename` is read by every delivery's match, so never listed.
    pub fn unread(&self) -> Vec<Unread> {
        let reads = self.reads.borrow();
        let empty = Reads::default();
        let mut found = Vec::new();
        for (type_name, (set, _)) in &self.records.by_type {
            let reads = reads.get(type_name).unwrap_or(&empty);
            let mut keys = Vec::new();
            unread_in(set, reads, &mut keys, &mut |keys, field| {
                let file = &self.records.files[field.at.file];
                let at = line_column(&file.text, field.at.offset);
                found.push(Unread {
                    type_name: type_name.clone(),
                    file: file.name.clone(),
                    line: at.line,
                    column: at.column,
                    keys,
                });
            });
        }
        found
    }
}

fn unread_in(
    set: &SelectionSet,
    reads: &Reads,
    keys: &mut Vec<String>,
    report: &mut dyn FnMut(Vec<String>, &Field),
) {
    if (0..=keys.len()).any(|n| reads.whole.contains(&keys[..n])) {
        return;
    }
    for (key, field) in &set.fields {
        if key == "__typename" {
            continue;
        }
        keys.push(key.clone());
        if reads.reached.contains(keys.as_slice()) {
            unread_in(&field.selection, reads, keys, report);
        } else if !reads.whole.contains(keys.as_slice()) {
            report(keys.clone(), field);
        }
        keys.pop();
    }
    for part in set.conditions.values() {
        unread_in(part, reads, keys, report);
    }
}

struct Walk<'w, 'a> {
    coverage: &'w Coverage<'a>,
    type_name: &'w str,
    root: &'w Cursor<'a>,
}

impl<'a> Walk<'_, 'a> {
    fn read_whole(&self, cursor: &Cursor<'a>) {
        if let Cursor::At { keys, .. } = cursor {
            let mut reads = self.coverage.reads.borrow_mut();
            let reads = reads.entry(self.type_name.to_owned()).or_default();
            reads.whole.insert(keys.clone());
        }
    }

    fn reached(&self, keys: &[String]) {
        let mut reads = self.coverage.reads.borrow_mut();
        let reads = reads.entry(self.type_name.to_owned()).or_default();
        reads.reached.insert(keys.to_vec());
    }

    /// Cannot be followed further: everything below is read, anything is accepted.
    fn anything(&self, from: &Cursor<'a>) -> Cursor<'a> {
        self.read_whole(from);
        Cursor::Anything
    }

    fn segment(&self, cursor: &Cursor<'a>, segment: &Segment) -> Result<Cursor<'a>, Miss> {
        match segment {
            Segment::Descendant(_) => Ok(self.anything(cursor)),
            Segment::Selector(selector) => self.selector(cursor, selector),
            Segment::Selectors(selectors) if selectors.len() == 1 => {
                self.selector(cursor, &selectors[0])
            }
            Segment::Selectors(selectors) => {
                for selector in selectors {
                    let reached = self.selector(cursor, selector)?;
                    self.read_whole(&reached);
                }
                Ok(Cursor::Anything)
            }
        }
    }

    fn segments(&self, start: &Cursor<'a>, segments: &[Segment]) -> Result<Cursor<'a>, Miss> {
        segments.iter().try_fold(start.clone(), |cursor, segment| {
            self.segment(&cursor, segment)
        })
    }

    fn selector(&self, cursor: &Cursor<'a>, selector: &Selector) -> Result<Cursor<'a>, Miss> {
        let Cursor::At { set, keys, shape } = cursor else {
            return Ok(Cursor::Anything);
        };
        let list = matches!(shape, Shape::Typed { list: true, .. });
        let element = || Cursor::At {
            set,
            keys: keys.clone(),
            shape: match shape {
                Shape::Typed { name, .. } => Shape::named(name.clone()),
                Shape::Unknown => Shape::Unknown,
            },
        };
        match selector {
            // A name on a list selects nothing; the schema check says so.
            Selector::Name(_) if list => Ok(Cursor::Anything),
            Selector::Name(key) => {
                let Some(field) = set.find(key) else {
                    return Err(Miss {
                        field: key.clone(),
                        parent: keys.clone(),
                    });
                };
                let mut keys = keys.clone();
                keys.push(key.clone());
                self.reached(&keys);
                if field.selection.is_empty() {
                    return Ok(Cursor::Anything);
                }
                let shape = match shape {
                    Shape::Typed { name, .. } => {
                        self.coverage.schema.field_shape(name, &field.name)
                    }
                    Shape::Unknown => Shape::Unknown,
                };
                Ok(Cursor::At {
                    set: &field.selection,
                    keys,
                    shape,
                })
            }
            Selector::Filter(filter) if list => {
                let element = element();
                self.filter(filter, &element)?;
                Ok(element)
            }
            Selector::Index(_) | Selector::Slice(..) if list => Ok(element()),
            Selector::Wildcard if list => Ok(element()),
            // An unknown shape may be a list: indexes keep to the same selection.
            Selector::Index(_) | Selector::Slice(..) if *shape == Shape::Unknown => Ok(element()),
            // Over an object these select member values of any field.
            _ => Ok(self.anything(cursor)),
        }
    }

    fn filter(&self, filter: &Filter, current: &Cursor<'a>) -> Result<(), Miss> {
        match filter {
            Filter::Or(filters) | Filter::And(filters) => {
                filters.iter().try_for_each(|f| self.filter(f, current))
            }
            Filter::Atom(FilterAtom::Filter { expr, .. }) => self.filter(expr, current),
            Filter::Atom(FilterAtom::Test { expr, .. }) => self.test(expr, current),
            Filter::Atom(FilterAtom::Comparison(comparison)) => {
                let (left, right) = comparison.vals();
                self.comparable(left, current)?;
                self.comparable(right, current)
            }
        }
    }

    fn test(&self, test: &Test, current: &Cursor<'a>) -> Result<(), Miss> {
        let reached = match test {
            Test::RelQuery(segments) => self.segments(current, segments)?,
            Test::AbsQuery(query) => self.segments(self.root, &query.segments)?,
            Test::Function(function) => return self.function(function, current),
        };
        // An existence test reads the value, whatever is below.
        self.read_whole(&reached);
        Ok(())
    }

    fn function(&self, function: &TestFunction, current: &Cursor<'a>) -> Result<(), Miss> {
        let args: Vec<&FnArg> = match function {
            TestFunction::Custom(_, args) => args.iter().collect(),
            TestFunction::Length(arg) => vec![arg],
            TestFunction::Value(arg) | TestFunction::Count(arg) => vec![arg],
            TestFunction::Search(a, b) | TestFunction::Match(a, b) => vec![a, b],
        };
        args.into_iter().try_for_each(|arg| match arg {
            FnArg::Literal(_) => Ok(()),
            FnArg::Test(test) => self.test(test, current),
            FnArg::Filter(filter) => self.filter(filter, current),
        })
    }

    fn comparable(&self, comparable: &Comparable, current: &Cursor<'a>) -> Result<(), Miss> {
        let (start, segments) = match comparable {
            Comparable::Literal(_) => return Ok(()),
            Comparable::Function(function) => return self.function(function, current),
            Comparable::SingularQuery(SingularQuery::Current(segments)) => (current, segments),
            Comparable::SingularQuery(SingularQuery::Root(segments)) => (self.root, segments),
        };
        let reached = segments.iter().try_fold(start.clone(), |cursor, segment| {
            let selector = match segment {
                SingularQuerySegment::Name(name) => Selector::Name(name.clone()),
                SingularQuerySegment::Index(index) => Selector::Index(*index),
            };
            self.selector(&cursor, &selector)
        })?;
        self.read_whole(&reached);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonpath_rust::parser::parse_json_path;

    const QUERY: &str = r#"
        query InvoiceWebhook($id: ID!) {
          node(id: $id) {
            __typename
            ... on Invoice {
              legacyId
              email: buyerEmailAddress
              statusFlags
              lineItems { ...Line }
              order {
                metadata { key value }
                invoices { edges { node { legacyId } } }
                lineItems { nodes { ...Line } }
                paymentGatewayDetails
              }
            }
          }
        }
        fragment Line on LineItem {
          quantity
          variant { advert { ... on Advert { taxon { treeName } } } }
        }
    "#;

    fn records() -> Records {
        let mut set = QuerySet::default();
        let problems = set.add(
            vec![("queries/invoice.graphql".into(), QUERY.into())],
            false,
        );
        assert!(problems.is_empty(), "{problems:?}");
        set.records()
    }

    fn check<'a>(coverage: &Coverage<'a>, path: &str) -> Result<Cursor<'a>, Box<NotSelected>> {
        let query = parse_json_path(path).unwrap();
        let root = coverage.root("Invoice").unwrap();
        coverage.check("Invoice", &root, &query, path)
    }

    #[test]
    fn paths_follow_aliases_fragments_connections_lists_and_filters() {
        let records = records();
        let coverage = Coverage::new(&records, MarketplacerSchema::builtin());
        for path in [
            "$.legacyId",
            "$.email",
            "$.statusFlags[?@ == 'PAID']",
            "$.lineItems[*].quantity",
            "$.lineItems[0].variant.advert.taxon.treeName",
            "$.lineItems[?@.quantity > 1].variant",
            "$.order.metadata[?@.key == 'vip'].value",
            "$.order.invoices.edges[*].node.legacyId",
            "$.order.lineItems.nodes[*].variant.advert.taxon",
            // Anything below a JSON scalar, and what descends or wildcards over an object.
            "$.order.paymentGatewayDetails.gateway.reference",
            "$.order..anything",
            "$.order.*.anything",
        ] {
            assert!(check(&coverage, path).is_ok(), "{path}");
        }
    }

    #[test]
    fn a_path_the_query_cannot_produce_names_the_field_and_where_to_add_it() {
        let records = records();
        let coverage = Coverage::new(&records, MarketplacerSchema::builtin());
        let err = check(&coverage, "$.order.phone").unwrap_err();
        assert_eq!((err.field.as_str(), err.column), ("phone", 9));
        assert_eq!(
            err.to_string(),
            r#"$.order.phone is not selected by queries/invoice.graphql; add "phone" under "order""#
        );
        // The schema's name is not the record's when the query aliases it.
        let err = check(&coverage, "$.buyerEmailAddress").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"$.buyerEmailAddress is not selected by queries/invoice.graphql; add "buyerEmailAddress" under "... on Invoice""#
        );
        // Inside connections, fragments and filters.
        let err = check(&coverage, "$.order.lineItems.nodes[*].variantSku").unwrap_err();
        assert_eq!(err.parent, ["order", "lineItems", "nodes"]);
        let err = check(&coverage, "$.order.invoices.edges[*].node.paidAt").unwrap_err();
        assert_eq!(err.parent, ["order", "invoices", "edges", "node"]);
        let err = check(&coverage, "$.lineItems[?@.sku == 'A'].quantity").unwrap_err();
        assert_eq!((err.field.as_str(), err.column), ("sku", 16));
        let err = check(
            &coverage,
            "$.lineItems[?@.quantity > $.order.total].quantity",
        )
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.parent.as_slice()),
            ("total", &["order".to_owned()][..])
        );
    }

    #[test]
    fn a_field_missing_from_a_builtin_query_says_where_the_fix_can_go() {
        let (set, _) = QuerySet::builtin();
        let records = set.records();
        let coverage = Coverage::new(&records, MarketplacerSchema::builtin());
        let err = check(&coverage, "$.order.companyName").unwrap_err();
        assert_eq!(
            err.to_string(),
            "$.order.companyName is not selected by <builtin>/queries/invoice.graphql; add \"companyName\" under \"order\" (in clients/NAME/queries/, or in a copy of the built-in queries in queries/ beside the mapping folder)"
        );
    }

    #[test]
    fn what_no_path_reads_is_listed_once_at_its_highest_field() {
        let records = records();
        let coverage = Coverage::new(&records, MarketplacerSchema::builtin());
        for path in ["$.legacyId", "$.order.metadata", "$.lineItems[*]"] {
            check(&coverage, path).unwrap();
        }
        let unread: Vec<String> = coverage.unread().iter().map(|u| u.keys.join(".")).collect();
        assert_eq!(
            unread,
            [
                "email",
                "statusFlags",
                "order.invoices",
                "order.lineItems",
                "order.paymentGatewayDetails"
            ]
        );
        let first = &coverage.unread()[0];
        assert_eq!((first.line, first.column), (7, 15));
    }
}
