//! Compiled JSONPath selections and match conditions.
//!
//! Paths are parsed once, when the mapping set is compiled (RFC 9535, via jsonpath-rust); a
//! record only ever runs pre-parsed queries. A selection that must exist and does not is an error
//! naming the field and the path, never a silent null.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value as Json;

/// A parsed JSONPath, kept with its source text for messages.
#[derive(Debug)]
pub struct Path {
    pub text: String,
    query: JpQuery,
    /// The path as plain steps, when it is only names and wildcards: see [`Step`].
    steps: Option<Vec<Step>>,
}

/// A step of a path made only of names and wildcards (`$.order.lineItems.nodes[*]`, as most
/// selections are), walked directly. The JSONPath library builds each node's normalized path
/// as text while it walks, a tenth of a lean-shape dry run (issue 18). With reading computed
/// values like `email | email` without the VM and asking the validator only whether a body is
/// valid, this took a one-job dry run's instructions (past start-up, callgrind) down 11% on the
/// lean order shape, 8% on the default one and 6% on the rich one (docs/performance.md).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// `.name`: the member of an object.
    Name(String),
    /// `[*]` or `.*`: every element of an array, every member value of an object, in order.
    All,
}

impl Step {
    /// The steps of `text`, if it is only `$`, `.name` (a plain name), `.*` and `[*]`.
    fn parse(text: &str) -> Option<Vec<Step>> {
        let mut rest = text.trim().strip_prefix('$')?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("[*]").or_else(|| rest.strip_prefix(".*")) {
                steps.push(Step::All);
                rest = after;
                continue;
            }
            let after = rest.strip_prefix('.')?;
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                return None;
            }
            steps.push(Step::Name(name.to_owned()));
            rest = &after[end..];
        }
        Some(steps)
    }
}

/// Every node `steps` select from `value`, in document order.
fn walk<'a>(steps: &[Step], value: &'a Json, out: &mut Vec<&'a Json>) {
    match steps.split_first() {
        None => out.push(value),
        Some((Step::Name(name), rest)) => {
            if let Some(child) = value.as_object().and_then(|map| map.get(name)) {
                walk(rest, child, out);
            }
        }
        Some((Step::All, rest)) => match value {
            Json::Array(items) => items.iter().for_each(|item| walk(rest, item, out)),
            Json::Object(map) => map.values().for_each(|item| walk(rest, item, out)),
            _ => {}
        },
    }
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let query = parse_json_path(text)
            .map_err(|e| format!("invalid JSONPath `{text}`: {}", brief(&e.to_string())))?;
        Ok(Path {
            text: text.to_owned(),
            query,
            steps: Step::parse(text),
        })
    }

    /// The parsed query, for checks against the Marketplacer schema.
    pub fn query(&self) -> &JpQuery {
        &self.query
    }

    /// Every node the path selects, in document order.
    pub fn nodes<'a>(&self, value: &'a Json) -> Vec<&'a Json> {
        if let Some(steps) = &self.steps {
            let mut found = Vec::new();
            walk(steps, value, &mut found);
            return found;
        }
        // A well-formed query over a JSON document does not fail at run time; treat the
        // library's "evaluated to a value, not nodes" answer as no match.
        js_path_process(&self.query, value)
            .map(|found| found.into_iter().map(|r| r.val).collect())
            .unwrap_or_default()
    }
}

/// The parser's multi-line report (a pest excerpt) in one line: what it expected, and where.
fn brief(report: &str) -> String {
    let expected = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("= "))
        .unwrap_or(report.lines().next().unwrap_or_default().trim());
    let column = report
        .split("-->")
        .nth(1)
        .and_then(|at| at.split_whitespace().next())
        .and_then(|at| at.split(':').nth(1));
    match column {
        Some(column) => format!("{expected} at column {column}"),
        None => expected.to_owned(),
    }
}

/// How many values a selection yields, and what happens when there are none.
#[derive(Debug)]
pub enum Cardinality {
    /// Exactly one value; an error when missing.
    Required,
    /// One value or `none`.
    Optional,
    /// One value, or this one when missing.
    Default(Json),
    /// Every match, as a list (possibly empty).
    Many,
}

/// One named selection of a mapping.
#[derive(Debug)]
pub struct Selection {
    pub name: String,
    pub path: Path,
    pub cardinality: Cardinality,
    /// Index of an earlier selection to read from instead of the record.
    pub from: Option<usize>,
}

/// Why a selection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    Missing {
        field: String,
        path: String,
    },
    Ambiguous {
        field: String,
        path: String,
        count: usize,
    },
}

impl std::fmt::Display for SelectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectError::Missing { field, path } => {
                write!(
                    f,
                    "required field `{field}` is missing (path `{path}` matched nothing)"
                )
            }
            SelectError::Ambiguous { field, path, count } => write!(
                f,
                "field `{field}` should be one value but path `{path}` matched {count}; add `many: true` or narrow the path"
            ),
        }
    }
}

/// How a selection found its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Picked {
    /// The path matched one value.
    Matched,
    /// A `many` selection: the path matched this many values.
    MatchedMany(usize),
    /// The path matched nothing, so the `default` was used.
    Default,
    /// An `optional` selection whose path matched nothing: `none`.
    OptionalNone,
}

/// What a selection found: borrowed from the record where it can be, so that nothing is
/// copied before a template reads it.
#[derive(Debug)]
pub enum Found<'a> {
    One(&'a Json),
    Many(Vec<&'a Json>),
    /// A default, or what was read from such a value.
    Owned(Json),
}

impl Found<'_> {
    /// The value as JSON (a copy), for explain and for `from:` over a list.
    pub fn to_json(&self) -> Json {
        match self {
            Found::One(node) => (*node).clone(),
            Found::Many(nodes) => Json::Array(nodes.iter().map(|n| (*n).clone()).collect()),
            Found::Owned(value) => value.clone(),
        }
    }

    /// The same, no longer borrowing.
    pub fn into_owned(self) -> Found<'static> {
        Found::Owned(self.to_json())
    }
}

impl Selection {
    /// Picks this selection's value from `root`. A JSON `null` counts as missing.
    pub fn pick(&self, root: &Json) -> Result<Json, SelectError> {
        self.pick_how(root).map(|(value, _)| value)
    }

    /// [`Selection::pick`], saying how the value was found.
    pub fn pick_how(&self, root: &Json) -> Result<(Json, Picked), SelectError> {
        self.find(root).map(|(found, how)| (found.to_json(), how))
    }

    /// What the path finds in `root`, borrowed, and how it was found.
    pub fn find<'a>(&self, root: &'a Json) -> Result<(Found<'a>, Picked), SelectError> {
        let found: Vec<&Json> = self
            .path
            .nodes(root)
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        if let Cardinality::Many = self.cardinality {
            let count = found.len();
            return Ok((Found::Many(found), Picked::MatchedMany(count)));
        }
        match (found.as_slice(), &self.cardinality) {
            ([one], _) => Ok((Found::One(one), Picked::Matched)),
            ([], Cardinality::Optional) => Ok((Found::Owned(Json::Null), Picked::OptionalNone)),
            ([], Cardinality::Default(value)) => Ok((Found::Owned(value.clone()), Picked::Default)),
            ([], _) => Err(SelectError::Missing {
                field: self.name.clone(),
                path: self.path.text.clone(),
            }),
            (many, _) => Err(SelectError::Ambiguous {
                field: self.name.clone(),
                path: self.path.text.clone(),
                count: many.len(),
            }),
        }
    }
}

/// A match condition, compiled.
#[derive(Debug)]
pub enum Condition {
    /// Some selected node equals the value.
    Equals(Path, Json),
    /// Some selected node equals one of the values.
    OneOf(Path, Vec<Json>),
    /// Some selected node is a list holding the value, or text containing it.
    Contains(Path, Json),
    /// The path selects at least one non-null node (or, with `false`, none).
    Exists(Path, bool),
    /// At least one of the alternatives holds.
    Any(Vec<Condition>),
}

impl Condition {
    /// The condition as a reader would write it: `$.status equals "REFUNDED"`.
    pub fn describe(&self) -> String {
        match self {
            Condition::Equals(path, value) => format!("{} equals {value}", path.text),
            Condition::OneOf(path, values) => {
                let values: Vec<String> = values.iter().map(Json::to_string).collect();
                format!("{} one of [{}]", path.text, values.join(", "))
            }
            Condition::Contains(path, value) => format!("{} contains {value}", path.text),
            Condition::Exists(path, true) => format!("{} exists", path.text),
            Condition::Exists(path, false) => format!("{} does not exist", path.text),
            Condition::Any(alternatives) => {
                let each: Vec<String> = alternatives.iter().map(Condition::describe).collect();
                format!("any of: {}", each.join("; "))
            }
        }
    }

    pub fn holds(&self, root: &Json) -> bool {
        match self {
            Condition::Equals(path, expected) => {
                path.nodes(root).into_iter().any(|v| v == expected)
            }
            Condition::OneOf(path, options) => path
                .nodes(root)
                .into_iter()
                .any(|v| options.iter().any(|o| o == v)),
            Condition::Contains(path, needle) => path.nodes(root).into_iter().any(|v| match v {
                Json::Array(items) => items.iter().any(|item| item == needle),
                Json::String(text) => needle.as_str().is_some_and(|n| text.contains(n)),
                _ => false,
            }),
            Condition::Exists(path, wanted) => {
                path.nodes(root).into_iter().any(|v| !v.is_null()) == *wanted
            }
            Condition::Any(alternatives) => alternatives.iter().any(|c| c.holds(root)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_path_walks_to_what_the_library_finds() {
        let doc = json!({
            "order": {"legacyId": 5001, "surname": null, "tags": ["a", "b"],
                "lineItems": {"nodes": [{"q": 1, "image": {"url": "u1"}}, {"q": 2}, 3]},
                "invoices": {"nodes": [{"seller": {"name": "A"}}, {"seller": null}, {}]},
                "byKey": {"z": {"v": 1}, "a": {"v": 2}, "m": 3}},
            "statusFlags": ["PAID"], "_x1": {"y": true}, "list": [[1, 2], [3]], "n": 7,
        });
        for text in [
            "$",
            "$.order.legacyId",
            "$.order.surname",
            "$.order.missing",
            "$.order.legacyId.deeper",
            "$.order.lineItems.nodes[*]",
            "$.order.lineItems.nodes[*].q",
            "$.order.lineItems.nodes[*].image.url",
            "$.order.invoices.nodes[*].seller.name",
            "$.order.byKey[*]",
            "$.order.byKey.*.v",
            "$.statusFlags",
            "$._x1.y",
            "$.list[*][*]",
            "$.n[*]",
            "$.order.tags.*",
        ] {
            let path = Path::parse(text).unwrap();
            assert!(path.steps.is_some(), "{text} is walked");
            let by_library: Vec<&Json> = js_path_process(&path.query, &doc)
                .map(|found| found.into_iter().map(|r| r.val).collect())
                .unwrap_or_default();
            assert_eq!(path.nodes(&doc), by_library, "{text}");
        }
        for text in [
            "$.order['legacyId']",
            "$.order.lineItems.nodes[0]",
            "$..q",
            "$.metadata[?@.key == 'x'].value",
            "$.a-b",
            "$.1a",
            "$.é",
        ] {
            assert_eq!(Step::parse(text), None, "{text} is left to the library");
        }
    }

    fn selection(path: &str, cardinality: Cardinality) -> Selection {
        Selection {
            name: "field".into(),
            path: Path::parse(path).unwrap(),
            cardinality,
            from: None,
        }
    }

    #[test]
    fn required_optional_default_and_many() {
        let doc = json!({"a": 1, "n": null, "list": [{"x": 1}, {"x": 2}]});
        assert_eq!(
            selection("$.a", Cardinality::Required).pick(&doc),
            Ok(json!(1))
        );
        assert_eq!(
            selection("$.b", Cardinality::Required).pick(&doc),
            Err(SelectError::Missing {
                field: "field".into(),
                path: "$.b".into()
            })
        );
        assert_eq!(
            selection("$.n", Cardinality::Required)
                .pick(&doc)
                .unwrap_err()
                .to_string(),
            "required field `field` is missing (path `$.n` matched nothing)"
        );
        assert_eq!(
            selection("$.b", Cardinality::Optional).pick(&doc),
            Ok(Json::Null)
        );
        assert_eq!(
            selection("$.b", Cardinality::Default(json!("AUD"))).pick(&doc),
            Ok(json!("AUD"))
        );
        assert_eq!(
            selection("$.list[*].x", Cardinality::Many).pick(&doc),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            selection("$.nope[*]", Cardinality::Many).pick(&doc),
            Ok(json!([]))
        );
        assert!(matches!(
            selection("$.list[*].x", Cardinality::Required).pick(&doc),
            Err(SelectError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn filter_expressions_follow_rfc_9535() {
        let doc = json!({"metadata": [{"key": "a", "value": "1"}, {"key": "accepts_marketing", "value": "yes"}]});
        let s = selection(
            "$.metadata[?@.key == 'accepts_marketing'].value",
            Cardinality::Optional,
        );
        assert_eq!(s.pick(&doc), Ok(json!("yes")));
    }

    #[test]
    fn conditions() {
        let doc = json!({"statusFlags": ["PAID", "SENT"], "status": "COMPLETE", "note": "x", "gone": null});
        let path = |p: &str| Path::parse(p).unwrap();
        assert!(Condition::Contains(path("$.statusFlags"), json!("PAID")).holds(&doc));
        assert!(!Condition::Contains(path("$.statusFlags"), json!("REFUNDED")).holds(&doc));
        assert!(Condition::Equals(path("$.statusFlags[*]"), json!("SENT")).holds(&doc));
        assert!(
            Condition::OneOf(path("$.status"), vec![json!("A"), json!("COMPLETE")]).holds(&doc)
        );
        assert!(Condition::Exists(path("$.note"), true).holds(&doc));
        assert!(Condition::Exists(path("$.gone"), false).holds(&doc));
        assert!(
            Condition::Any(vec![
                Condition::Equals(path("$.status"), json!("NEW")),
                Condition::Contains(path("$.statusFlags"), json!("PAID")),
            ])
            .holds(&doc)
        );
        assert!(!Condition::Any(vec![]).holds(&doc));
    }

    #[test]
    fn bad_paths_are_reported_with_their_text() {
        let err = Path::parse("$.a[").unwrap_err();
        assert_eq!(
            err,
            "invalid JSONPath `$.a[`: expected selector at column 5"
        );
        let err = Path::parse("$.flags[?@ == ]").unwrap_err();
        assert_eq!(
            err,
            "invalid JSONPath `$.flags[?@ == ]`: expected comparable at column 15"
        );
    }
}
