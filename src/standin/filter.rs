//! Klaviyo's JSON:API `filter` syntax (developers.klaviyo.com/en/docs/filtering_), parsed whole
//! and then held to what one endpoint's spec allows, field by field and operator by operator.
//!
//! Why a parser and not string matching: a reader's filter is where a mistake costs most
//! quietly. A quoted datetime, an unencoded `+` in an offset, `>=` where the endpoint only takes
//! `>`, a field the endpoint cannot filter on: Klaviyo answers each with 400, and a stand-in that
//! ignored the term instead would answer a wider page than asked for, which a test would take
//! for a correct read. So everything is parsed, and every term must be one the endpoint's
//! `filter` parameter lists in the OpenAPI spec, with a value of the field's type.
//!
//! The grammar: `op(field,value)` terms, combined with `and(...)` or, at the top level, with
//! commas (an implicit `and`). Values are quoted strings (`"…"` or `'…'`, backslash escapes),
//! lists (`["a","b"]`), and unquoted datetimes (ISO 8601), numbers, `true`, `false`, `null`.
//! `or` and `not` are refused: no endpoint the stand-in answers lists them.

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use std::fmt;

/// A comparison operator of the filter syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Equals,
    Any,
    GreaterThan,
    GreaterOrEqual,
    LessThan,
    LessOrEqual,
    Has,
    Contains,
    ContainsAny,
    ContainsAll,
    StartsWith,
    EndsWith,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "equals" => Op::Equals,
            "any" => Op::Any,
            "greater-than" => Op::GreaterThan,
            "greater-or-equal" => Op::GreaterOrEqual,
            "less-than" => Op::LessThan,
            "less-or-equal" => Op::LessOrEqual,
            "has" => Op::Has,
            "contains" => Op::Contains,
            "contains-any" => Op::ContainsAny,
            "contains-all" => Op::ContainsAll,
            "starts-with" => Op::StartsWith,
            "ends-with" => Op::EndsWith,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Equals => "equals",
            Op::Any => "any",
            Op::GreaterThan => "greater-than",
            Op::GreaterOrEqual => "greater-or-equal",
            Op::LessThan => "less-than",
            Op::LessOrEqual => "less-or-equal",
            Op::Has => "has",
            Op::Contains => "contains",
            Op::ContainsAny => "contains-any",
            Op::ContainsAll => "contains-all",
            Op::StartsWith => "starts-with",
            Op::EndsWith => "ends-with",
        }
    }

    /// Whether `left op right` holds, for an ordering comparison.
    pub(crate) fn compares<T: PartialOrd>(self, left: &T, right: &T) -> bool {
        match self {
            Op::GreaterThan => left > right,
            Op::GreaterOrEqual => left >= right,
            Op::LessThan => left < right,
            Op::LessOrEqual => left <= right,
            Op::Equals => left == right,
            _ => false,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value as written in a filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    List(Vec<Literal>),
    /// An unquoted datetime with its offset (`2025-03-04T00:00:00+11:00`, `…Z`).
    DateTime(DateTime<FixedOffset>),
    /// An unquoted datetime without an offset (`2025-03-04T00:00:00`).
    Naive(NaiveDateTime),
    Integer(i64),
    Number(f64),
    Bool(bool),
    Null,
}

/// One `op(field,value)` term.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub(crate) op: Op,
    pub(crate) field: String,
    pub(crate) value: Literal,
}

/// Parses a whole filter into its terms (all of which must hold); the error says what is wrong
/// and where, in words a client can act on.
pub(crate) fn parse(text: &str) -> Result<Vec<Condition>, String> {
    let mut parser = Parser {
        text,
        at: 0,
        depth: 0,
    };
    let mut conditions = Vec::new();
    loop {
        parser.call(&mut conditions)?;
        parser.skip_spaces();
        if parser.eat(',') {
            continue;
        }
        if parser.at < text.len() {
            return Err(parser.unexpected("`,` between terms, or the end of the filter"));
        }
        return Ok(conditions);
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_spaces();
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{c}`")))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(c) => format!(
                "Invalid filter provided: expected {wanted} at character {} but found `{c}`.",
                self.at + 1
            ),
            None => format!("Invalid filter provided: expected {wanted} but the filter ended."),
        }
    }

    /// A name: letters, digits, `-`, `_`, `.`, `$`.
    fn name(&mut self) -> &str {
        self.skip_spaces();
        let start = self.at;
        let length = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '$')))
            .unwrap_or(self.rest().len());
        self.at += length;
        &self.text[start..self.at]
    }

    /// `and(...)` or `op(field,value)`, adding its terms to `out`.
    fn call(&mut self, out: &mut Vec<Condition>) -> Result<(), String> {
        let start = self.at;
        let name = self.name().to_owned();
        if name.is_empty() {
            self.at = start;
            return Err(self.unexpected("an operator such as `equals(`"));
        }
        self.expect('(')?;
        match name.as_str() {
            "and" => {
                self.depth += 1;
                if self.depth > 8 {
                    return Err("Invalid filter provided: `and` nested too deeply.".into());
                }
                loop {
                    self.call(out)?;
                    if !self.eat(',') {
                        break;
                    }
                }
                self.depth -= 1;
                self.expect(')')
            }
            "or" | "not" => Err(format!(
                "Invalid filter provided: `{name}` is not supported by this endpoint; combine \
                 terms with `and(...)`."
            )),
            _ => {
                let op = Op::parse(&name).ok_or_else(|| {
                    format!("Invalid filter provided: unknown operator `{name}`.")
                })?;
                let field = self.name().to_owned();
                if field.is_empty() {
                    return Err(self.unexpected(&format!("a field name after `{name}(`")));
                }
                self.expect(',')?;
                let value = self.value()?;
                self.expect(')')?;
                out.push(Condition { op, field, value });
                Ok(())
            }
        }
    }

    fn value(&mut self) -> Result<Literal, String> {
        self.skip_spaces();
        match self.peek() {
            Some(q @ ('"' | '\'')) => self.quoted(q).map(Literal::Str),
            Some('[') => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(']') {
                    loop {
                        items.push(self.value()?);
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',')?;
                    }
                }
                Ok(Literal::List(items))
            }
            Some(_) => {
                let start = self.at;
                let length = self
                    .rest()
                    .find([',', ')', ']'])
                    .unwrap_or(self.rest().len());
                self.at += length;
                bare(self.text[start..self.at].trim())
            }
            None => Err(self.unexpected("a value")),
        }
    }

    fn quoted(&mut self, quote: char) -> Result<String, String> {
        self.at += 1;
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                c if c == quote => {
                    self.at += i + 1;
                    return Ok(value);
                }
                c => value.push(c),
            }
        }
        Err(format!(
            "Invalid filter provided: a string opened with {quote} is never closed."
        ))
    }
}

/// An unquoted value: `true`, `false`, `null`, a number, or a datetime.
fn bare(text: &str) -> Result<Literal, String> {
    match text {
        "" => return Err("Invalid filter provided: a value is missing.".into()),
        "true" => return Ok(Literal::Bool(true)),
        "false" => return Ok(Literal::Bool(false)),
        "null" => return Ok(Literal::Null),
        _ => {}
    }
    if let Ok(n) = text.parse::<i64>() {
        return Ok(Literal::Integer(n));
    }
    if let Ok(n) = text.parse::<f64>()
        && n.is_finite()
    {
        return Ok(Literal::Number(n));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Literal::DateTime(t));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(Literal::Naive(t));
    }
    // An offset's `+` sent unencoded in a URL arrives as a space.
    if text.contains(' ') && DateTime::parse_from_rfc3339(&text.replace(' ', "+")).is_ok() {
        return Err(format!(
            "Invalid filter provided: `{text}` is not a datetime. A `+` in a URL reads as a \
             space: encode the offset's `+` as %2B."
        ));
    }
    Err(format!(
        "Invalid filter provided: `{text}` is not a valid value. Strings are quoted \
         (\"…\"); datetimes (ISO 8601), numbers, true, false and null are not."
    ))
}

/// The type of value a filterable field holds, which decides what a term may compare it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Quoted strings (`equals`), lists of them (`any`).
    Text,
    /// Unquoted datetimes with an offset.
    DateTime,
    /// Unquoted integers (seconds since the epoch).
    Integer,
    /// A field Klaviyo filters on that the stand-in holds no data for (`_kx`, suppression
    /// reasons, `has(profile)`): refused rather than answered as if nothing matched.
    Unmodelled,
}

/// One field an endpoint's `filter` accepts: its name, operators and value type, as the
/// endpoint's `filter` parameter lists them in the OpenAPI spec.
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) ops: &'static [Op],
    pub(crate) kind: Kind,
}

/// The most values an `any(...)` list may hold here. Klaviyo documents no limit; a page of
/// profiles is at most 100, so a longer list could never come back whole on one page.
pub(crate) const MAX_ANY: usize = 100;

/// Parses `text` and holds every term to `fields`: a field not listed, an operator the field
/// does not take, or a value of the wrong type is an error naming it.
pub(crate) fn parse_for(text: &str, fields: &[Field]) -> Result<Vec<Condition>, String> {
    let conditions = parse(text)?;
    for condition in &conditions {
        check(condition, fields)?;
    }
    Ok(conditions)
}

fn check(condition: &Condition, fields: &[Field]) -> Result<(), String> {
    let Some(field) = fields.iter().find(|f| f.name == condition.field) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        return Err(format!(
            "'{}' is not a valid field for the resource with operator '{}'. Fields this \
             endpoint filters on: {}.",
            condition.field,
            condition.op,
            names.join(", ")
        ));
    };
    if !field.ops.contains(&condition.op) {
        let ops: Vec<&str> = field.ops.iter().map(|o| o.name()).collect();
        return Err(format!(
            "'{}' is not a valid operator for the field '{}'; it takes {}.",
            condition.op,
            field.name,
            ops.join(", ")
        ));
    }
    if field.kind == Kind::Unmodelled {
        return Err(format!(
            "Klaviyo filters on '{}', but the stand-in does not model it.",
            field.name
        ));
    }
    let of_kind = |value: &Literal| match (field.kind, value) {
        (Kind::Text, Literal::Str(_)) => Ok(()),
        (Kind::DateTime, Literal::DateTime(_)) => Ok(()),
        (Kind::DateTime, Literal::Naive(_)) => Err(format!(
            "The datetime in '{}' needs an offset (`Z` or `+hh:mm`).",
            field.name
        )),
        (Kind::DateTime, Literal::Str(_)) => Err(format!(
            "Datetimes are not quoted: write {}({},2025-03-04T00:00:00Z).",
            condition.op, field.name
        )),
        (Kind::Integer, Literal::Integer(_)) => Ok(()),
        (Kind::Text, _) => Err(format!(
            "'{}' is compared with quoted strings (\"…\").",
            field.name
        )),
        (Kind::DateTime, _) => Err(format!(
            "'{}' is compared with an unquoted ISO 8601 datetime.",
            field.name
        )),
        (Kind::Integer, _) => Err(format!(
            "'{}' is compared with an unquoted integer.",
            field.name
        )),
        (Kind::Unmodelled, _) => unreachable!("refused above"),
    };
    match (&condition.op, &condition.value) {
        (Op::Any, Literal::List(items)) => {
            if items.is_empty() || items.len() > MAX_ANY {
                return Err(format!(
                    "any({},[…]) takes 1 to {MAX_ANY} values; this one has {}.",
                    field.name,
                    items.len()
                ));
            }
            items.iter().try_for_each(of_kind)
        }
        (Op::Any, _) => Err(format!(
            "any({},…) takes a list: any({},[\"a\",\"b\"]).",
            field.name, field.name
        )),
        (_, Literal::List(_)) => Err(format!(
            "'{}' takes one value, not a list; use any(...) for several.",
            condition.op
        )),
        (_, value) => of_kind(value),
    }
}

impl Literal {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Literal::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The strings of `equals` (one) or `any` (each in the list).
    pub(crate) fn strings(&self) -> Vec<&str> {
        match self {
            Literal::Str(s) => vec![s.as_str()],
            Literal::List(items) => items.iter().filter_map(Literal::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT_FIELDS: &[Field] = &[
        Field {
            name: "metric_id",
            ops: &[Op::Equals],
            kind: Kind::Text,
        },
        Field {
            name: "datetime",
            ops: &[
                Op::GreaterOrEqual,
                Op::GreaterThan,
                Op::LessOrEqual,
                Op::LessThan,
            ],
            kind: Kind::DateTime,
        },
        Field {
            name: "email",
            ops: &[Op::Equals, Op::Any],
            kind: Kind::Text,
        },
    ];

    #[test]
    fn terms_combine_with_and_or_commas() {
        let filter = r#"and(equals(metric_id,"AbC,)"),greater-or-equal(datetime,2025-03-04T00:00:00+11:00)),less-than(datetime,2025-03-05T00:00:00Z)"#;
        let terms = parse_for(filter, EVENT_FIELDS).unwrap();
        assert_eq!(terms.len(), 3);
        assert_eq!(terms[0].value, Literal::Str("AbC,)".into()));
        assert_eq!(terms[1].op, Op::GreaterOrEqual);
        assert!(matches!(terms[2].value, Literal::DateTime(_)));
        let any = parse_for(r#"any(email,["a@b.co", 'c\'d@e.co'])"#, EVENT_FIELDS).unwrap();
        assert_eq!(any[0].value.strings(), ["a@b.co", "c'd@e.co"]);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                r#"equals(profile_id,"x")"#,
                "'profile_id' is not a valid field",
            ),
            (
                "equals(datetime,2025-03-04T00:00:00Z)",
                "not a valid operator for the field 'datetime'",
            ),
            (
                r#"greater-than(datetime,"2025-03-04T00:00:00Z")"#,
                "Datetimes are not quoted",
            ),
            (
                "greater-than(datetime,2025-03-04T00:00:00 11:00)",
                "encode the offset's `+` as %2B",
            ),
            (
                "greater-than(datetime,2025-03-04T00:00:00)",
                "needs an offset",
            ),
            ("equals(metric_id,abc)", "Strings are quoted"),
            (r#"equals(email,["a@b.co"])"#, "not a list"),
            (r#"any(email,"a@b.co")"#, "takes a list"),
            (r#"or(equals(email,"a"))"#, "`or` is not supported"),
            (r#"equals(email,"a)"#, "never closed"),
            (r#"equals(email,"a""#, "expected `)` but the filter ended"),
            (r#"equals(email,"a"))"#, "expected `,` between terms"),
            (r#"contains(email,"a")"#, "not a valid operator"),
            (r#"nope(email,"a")"#, "unknown operator `nope`"),
            ("", "expected an operator"),
        ];
        for (filter, needle) in cases {
            let error = parse_for(filter, EVENT_FIELDS).unwrap_err();
            assert!(error.contains(needle), "{filter}: {error}");
        }
        let many: Vec<String> = (0..=MAX_ANY).map(|i| format!("\"{i}@x.co\"")).collect();
        let error = parse_for(&format!("any(email,[{}])", many.join(",")), EVENT_FIELDS);
        assert!(error.unwrap_err().contains("1 to 100 values"));
    }
}
