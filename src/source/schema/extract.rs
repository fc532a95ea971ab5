//! `schemas/marketplacer/types.json`, generated from Marketplacer's GraphQL SDL.
//!
//! The SDL is half a megabyte of types, inputs and arguments, most of which no mapping can ever
//! see: a mapping reads the `node` of a webhook query, so only output types reachable from the
//! webhook roots matter, and of a field only its name and the type it yields (named type, list
//! or not). Shipping that subset as data, rather than the SDL, keeps the binary small and makes
//! a schema update a reviewable diff (one line per type), and parsing the SDL with a real GraphQL
//! parser (`apollo-parser`) rather than by hand means descriptions, directives and arguments
//! cannot be mistaken for fields.
//!
//! The provenance written into the file is the copy recorded in [`SOURCE`]. Extraction refuses
//! an SDL whose sha256 differs from it, so the file can never claim a source it was not built
//! from: a newer SDL needs its provenance recorded here first.

use std::collections::BTreeMap;

use apollo_parser::Parser;
use apollo_parser::cst::{self, CstNode};
use sha2::{Digest, Sha256};

use super::{Kind, Provenance, TypeEntry, TypesFile};

/// The SDL copy the committed `types.json` is built from (see `SOURCE.md` beside it).
pub struct SourceCopy {
    /// Where the copy lives, relative to the folder holding the repository.
    pub source: &'static str,
    pub repository: &'static str,
    /// Path of the file in `repository`.
    pub path: &'static str,
    pub commit: &'static str,
    /// Git blob id of the file.
    pub blob: &'static str,
    /// sha256 of the copy's bytes, checked on every extraction.
    pub sha256: &'static str,
    pub licence: &'static str,
}

/// A third-party copy of a Marketplacer instance schema, dated on or before November 2023.
pub const SOURCE: SourceCopy = SourceCopy {
    source: "shared/reference/marketplacer/marketplacer.graphqls",
    repository: "znsio/specmatic-order-contracts",
    path: "com/marketplacer/marketplacer.graphqls",
    commit: "f476387a50c223aa23b571aec2aa197d9a93f9f0",
    blob: "f43b8fbcd88182d60cfbe3fbd021d94fa938724e",
    sha256: "b0a618cf8f04518c9991f86fa71cb4554df14b7bcb9171d633d26e74f3254059",
    licence: "MIT",
};

/// The types a mapping's record can be (`match.type`): the nodes of the webhook queries in
/// `shared/reference/marketplacer/modelled/webhook-queries.graphql`, plus `Seller`, whose
/// webhook is common. Everything they reach is extracted with them.
pub const ROOTS: &[&str] = &["Invoice", "Order", "RefundRequest", "Seller", "Shipment"];

/// The fields of `Query` a webhook, backfill or reconciliation query starts from (`node(id:)`,
/// `siteConfig`, `klaviyoSettings`, `updatedOrders`, and the lists a reconciliation pages:
/// `invoices`, `refundRequests`, `invoiceAmendments`, `webhooks`); `Query` is extracted with
/// these alone, since the whole of it reaches every type of the SDL.
pub const QUERY_FIELDS: &[&str] = &[
    "node",
    "siteConfig",
    "klaviyoSettings",
    "updatedOrders",
    "invoices",
    "refundRequests",
    "invoiceAmendments",
    "webhooks",
];

/// Scalars whose values are arbitrary JSON, so any path below them may match.
const JSON_SCALARS: &[&str] = &["JSON"];

/// GraphQL's own scalars, which an SDL uses without declaring.
const BUILTIN_SCALARS: &[&str] = &["Boolean", "Float", "ID", "Int", "String"];

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(
        "the SDL's sha256 is {found}, not that of the recorded copy ({expected}): record the new \
         copy's provenance in `SOURCE` (src/source/schema/extract.rs) first"
    )]
    UnknownCopy { found: String, expected: String },
    #[error("the SDL does not parse: {0}")]
    Syntax(String),
    #[error("`{0}` is not defined in the SDL")]
    MissingType(String),
    #[error("{0} is defined twice")]
    Duplicate(String),
    #[error(
        "{0}: type extensions (`extend ...`) are not supported; merge them into the definition"
    )]
    Extension(String),
    #[error("field `{field}` of `{on_type}` is a list of lists, which types.json cannot express")]
    NestedList { on_type: String, field: String },
}

/// Builds `types.json` from the SDL copy recorded in [`SOURCE`].
pub fn extract(sdl: &[u8]) -> Result<TypesFile, ExtractError> {
    let sha256 = hex::encode(Sha256::digest(sdl));
    if sha256 != SOURCE.sha256 {
        return Err(ExtractError::UnknownCopy {
            found: sha256,
            expected: SOURCE.sha256.to_owned(),
        });
    }
    let provenance = Provenance {
        source: SOURCE.source.into(),
        repository: SOURCE.repository.into(),
        path: SOURCE.path.into(),
        commit: SOURCE.commit.into(),
        blob: SOURCE.blob.into(),
        sha256,
        licence: SOURCE.licence.into(),
    };
    let text = String::from_utf8_lossy(sdl);
    extract_from(&text, provenance, ROOTS, QUERY_FIELDS)
}

/// The types of `sdl` reachable from `roots` and from `query_fields` of `Query`, with the
/// given provenance.
fn extract_from(
    sdl: &str,
    provenance: Provenance,
    roots: &[&str],
    query_fields: &[&str],
) -> Result<TypesFile, ExtractError> {
    let mut defined = definitions(sdl)?;
    let mut types = BTreeMap::new();
    let mut pending: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
    if !query_fields.is_empty() {
        let mut query = defined
            .remove("Query")
            .ok_or_else(|| ExtractError::MissingType("Query".into()))?;
        for wanted in query_fields {
            if !query.fields.contains_key(*wanted) {
                return Err(ExtractError::MissingType(format!("Query.{wanted}")));
            }
        }
        query
            .fields
            .retain(|name, _| query_fields.contains(&name.as_str()));
        query
            .arguments
            .retain(|name, _| query_fields.contains(&name.as_str()));
        query
            .deprecated
            .retain(|name, _| query_fields.contains(&name.as_str()));
        pending.extend(query.fields.values().map(|t| element(t).to_owned()));
        types.insert("Query".to_owned(), query);
    }
    while let Some(name) = pending.pop() {
        if types.contains_key(&name) {
            continue;
        }
        let entry = defined
            .get(&name)
            .cloned()
            .ok_or_else(|| ExtractError::MissingType(name.clone()))?;
        pending.extend(entry.fields.values().map(|t| element(t).to_owned()));
        pending.extend(entry.possible.iter().cloned());
        types.insert(name, entry);
    }
    Ok(TypesFile {
        provenance,
        roots: roots.iter().map(|r| (*r).to_owned()).collect(),
        types,
    })
}

/// The named type in a field type written `Name` or `[Name]`.
fn element(field_type: &str) -> &str {
    field_type.trim_start_matches('[').trim_end_matches(']')
}

/// Every output type, scalar and enum the SDL defines (plus the built-in scalars), with
/// interfaces listing their implementors. Input types, directives and arguments are dropped.
fn definitions(sdl: &str) -> Result<BTreeMap<String, TypeEntry>, ExtractError> {
    let tree = Parser::new(sdl).parse();
    let errors: Vec<String> = tree
        .errors()
        .map(|e| format!("{} at byte {}", e.message(), e.index()))
        .collect();
    if !errors.is_empty() {
        return Err(ExtractError::Syntax(errors.join("; ")));
    }
    let mut types: BTreeMap<String, TypeEntry> = BUILTIN_SCALARS
        .iter()
        .map(|name| ((*name).to_owned(), entry(Kind::Scalar)))
        .collect();
    let mut implementations: Vec<(String, String)> = Vec::new();
    for definition in tree.document().definitions() {
        let (name, entry) = match definition {
            cst::Definition::ObjectTypeDefinition(object) => {
                let name = name_of(object.name());
                for interface in named_types(object.implements_interfaces()) {
                    implementations.push((interface, name.clone()));
                }
                let (fields, arguments, deprecated) = fields(&name, object.fields_definition())?;
                (
                    name,
                    TypeEntry {
                        fields,
                        arguments,
                        deprecated,
                        ..entry(Kind::Object)
                    },
                )
            }
            cst::Definition::InterfaceTypeDefinition(interface) => {
                let name = name_of(interface.name());
                let (fields, arguments, deprecated) = fields(&name, interface.fields_definition())?;
                (
                    name,
                    TypeEntry {
                        fields,
                        arguments,
                        deprecated,
                        ..entry(Kind::Interface)
                    },
                )
            }
            cst::Definition::UnionTypeDefinition(union) => {
                let mut possible: Vec<String> = union
                    .union_member_types()
                    .map(|m| m.named_types().map(|t| name_of(t.name())).collect())
                    .unwrap_or_default();
                possible.sort();
                (
                    name_of(union.name()),
                    TypeEntry {
                        possible,
                        ..entry(Kind::Union)
                    },
                )
            }
            cst::Definition::ScalarTypeDefinition(scalar) => {
                let name = name_of(scalar.name());
                let kind = if JSON_SCALARS.contains(&name.as_str()) {
                    Kind::Json
                } else {
                    Kind::Scalar
                };
                (name, entry(kind))
            }
            cst::Definition::EnumTypeDefinition(enumeration) => {
                let values = enumeration
                    .enum_values_definition()
                    .map(|v| {
                        v.enum_value_definitions()
                            .filter_map(|d| d.enum_value())
                            .map(|v| v.text().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    name_of(enumeration.name()),
                    TypeEntry {
                        values,
                        ..entry(Kind::Enum)
                    },
                )
            }
            cst::Definition::ScalarTypeExtension(_)
            | cst::Definition::ObjectTypeExtension(_)
            | cst::Definition::InterfaceTypeExtension(_)
            | cst::Definition::UnionTypeExtension(_)
            | cst::Definition::EnumTypeExtension(_) => {
                let text = definition.syntax().text().to_string();
                let head = text.lines().next().unwrap_or_default().to_owned();
                return Err(ExtractError::Extension(head));
            }
            // Inputs, directives, the schema definition and operations: not output shapes.
            _ => continue,
        };
        if types.insert(name.clone(), entry).is_some() {
            return Err(ExtractError::Duplicate(format!("type `{name}`")));
        }
    }
    for (interface, implementor) in implementations {
        let entry = types
            .get_mut(&interface)
            .ok_or_else(|| ExtractError::MissingType(interface.clone()))?;
        entry.possible.push(implementor);
        entry.possible.sort();
    }
    Ok(types)
}

fn entry(kind: Kind) -> TypeEntry {
    TypeEntry {
        kind,
        fields: BTreeMap::new(),
        possible: Vec::new(),
        values: Vec::new(),
        arguments: BTreeMap::new(),
        deprecated: BTreeMap::new(),
    }
}

fn name_of(name: Option<cst::Name>) -> String {
    name.map(|n| n.text().to_string()).unwrap_or_default()
}

fn named_types(interfaces: Option<cst::ImplementsInterfaces>) -> Vec<String> {
    interfaces
        .map(|i| i.named_types().map(|t| name_of(t.name())).collect())
        .unwrap_or_default()
}

/// A type's fields, its fields' arguments, and its deprecated fields with their reasons.
type Fields = (
    BTreeMap<String, String>,
    BTreeMap<String, BTreeMap<String, String>>,
    BTreeMap<String, String>,
);

/// Field name to field type, written `Name` or `[Name]` (non-null does not matter to a path),
/// with the arguments and deprecations a query is checked against.
fn fields(
    on_type: &str,
    definition: Option<cst::FieldsDefinition>,
) -> Result<Fields, ExtractError> {
    let mut fields = BTreeMap::new();
    let mut arguments = BTreeMap::new();
    let mut deprecated = BTreeMap::new();
    for field in definition.iter().flat_map(|d| d.field_definitions()) {
        let name = name_of(field.name());
        let args: BTreeMap<String, String> = field
            .arguments_definition()
            .iter()
            .flat_map(|a| a.input_value_definitions())
            .map(|arg| {
                let written = arg
                    .ty()
                    .map(|t| t.syntax().text().to_string())
                    .unwrap_or_default();
                let written: String = written.split_whitespace().collect();
                // A default makes a non-null argument optional to give.
                let written = match arg.default_value() {
                    Some(_) => written.trim_end_matches('!').to_owned(),
                    None => written,
                };
                (name_of(arg.name()), written)
            })
            .collect();
        if !args.is_empty() {
            arguments.insert(name.clone(), args);
        }
        if let Some(reason) = deprecation(field.directives()) {
            deprecated.insert(name.clone(), reason);
        }
        let (element, lists) = unwrap(field.ty());
        let written = match lists {
            0 => element,
            1 => format!("[{element}]"),
            _ => {
                return Err(ExtractError::NestedList {
                    on_type: on_type.to_owned(),
                    field: name,
                });
            }
        };
        if fields.insert(name.clone(), written).is_some() {
            return Err(ExtractError::Duplicate(format!("field `{on_type}.{name}`")));
        }
    }
    Ok((fields, arguments, deprecated))
}

/// The reason of an `@deprecated` directive (GraphQL's default reason when none is given).
fn deprecation(directives: Option<cst::Directives>) -> Option<String> {
    let directive = directives?
        .directives()
        .find(|d| name_of(d.name()) == "deprecated")?;
    let reason = directive
        .arguments()
        .iter()
        .flat_map(|a| a.arguments())
        .find(|a| name_of(a.name()) == "reason")
        .and_then(|a| match a.value() {
            Some(cst::Value::StringValue(s)) => Some(String::from(s)),
            _ => None,
        });
    Some(reason.unwrap_or_else(|| "No longer supported".to_owned()))
}

/// The named type inside a field type, and how many lists wrap it.
fn unwrap(ty: Option<cst::Type>) -> (String, usize) {
    match ty {
        Some(cst::Type::NamedType(named)) => (name_of(named.name()), 0),
        Some(cst::Type::ListType(list)) => {
            let (name, lists) = unwrap(list.ty());
            (name, lists + 1)
        }
        Some(cst::Type::NonNullType(non_null)) => {
            match (non_null.named_type(), non_null.list_type()) {
                (Some(named), _) => (name_of(named.name()), 0),
                (None, Some(list)) => {
                    let (name, lists) = unwrap(list.ty());
                    (name, lists + 1)
                }
                (None, None) => (String::new(), 0),
            }
        }
        None => (String::new(), 0),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn committed_types_are_what_the_sdl_gives() {
        // The SDL sits in `shared/` beside the repository on a developer's machine; a clone
        // without it (CI may have none) relies on the committed file.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(sdl) = manifest
            .ancestors()
            .map(|dir| dir.join(SOURCE.source))
            .find(|path| path.is_file())
        else {
            eprintln!(
                "{} not found: comparison with types.json skipped",
                SOURCE.source
            );
            return;
        };
        let extracted = extract(&std::fs::read(&sdl).unwrap()).unwrap().render();
        let committed =
            std::fs::read_to_string(manifest.join("schemas/marketplacer/types.json")).unwrap();
        assert!(
            committed == extracted,
            "schemas/marketplacer/types.json is stale: run `marketsync schemas marketplacer --sdl ../{}`",
            SOURCE.source
        );
        // Rendering is the file's own format: parsing and rendering again changes nothing.
        let parsed: TypesFile = serde_json::from_str(&committed).unwrap();
        assert_eq!(parsed.render(), committed);
    }

    fn provenance() -> Provenance {
        Provenance {
            source: "test.graphqls".into(),
            repository: "example/repo".into(),
            path: "schema.graphqls".into(),
            commit: "0".repeat(40),
            blob: "0".repeat(40),
            sha256: "0".repeat(64),
            licence: "MIT".into(),
        }
    }

    const SDL: &str = r#"
        """An interface"""
        interface Node { id: ID! }
        scalar JSON
        scalar ISO8601DateTime
        enum StatusEnum { OPEN CLOSED }
        union Party = Person | Company
        type Order implements Node {
            "the id"
            id: ID!
            status: StatusEnum!
            party: Party
            lines(first: Int! = 10, after: String!): [Line!]! @deprecated(reason: "no")
            extra: JSON
            at: ISO8601DateTime
        }
        type Line implements Node { id: ID! tags: [String!] }
        type Person { name: String }
        type Company { name: String vat: String }
        type Unreached implements Node { id: ID! }
        input OrderInput { id: ID! }
    "#;

    #[test]
    fn keeps_what_the_roots_reach_with_field_types_and_members() {
        let file = extract_from(SDL, provenance(), &["Order"], &[]).unwrap();
        let names: Vec<&str> = file.types.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Company",
                "ID",
                "ISO8601DateTime",
                "JSON",
                "Line",
                "Order",
                "Party",
                "Person",
                "StatusEnum",
                "String"
            ]
        );
        let order = &file.types["Order"];
        assert_eq!(order.kind, Kind::Object);
        assert_eq!(order.fields["lines"], "[Line]");
        assert_eq!(order.fields["status"], "StatusEnum");
        assert_eq!(file.types["Party"].possible, ["Company", "Person"]);
        assert_eq!(file.types["JSON"].kind, Kind::Json);
        assert_eq!(file.types["StatusEnum"].values, ["OPEN", "CLOSED"]);
        // Arguments keep `!` only where they must be given; deprecations keep their reason.
        assert_eq!(order.arguments["lines"]["first"], "Int");
        assert_eq!(order.arguments["lines"]["after"], "String!");
        assert_eq!(order.deprecated["lines"], "no");
        assert!(!order.deprecated.contains_key("status"));
        // Reaching an interface reaches every implementor.
        let file = extract_from(SDL, provenance(), &["Node"], &[]).unwrap();
        assert_eq!(file.types["Node"].possible, ["Line", "Order", "Unreached"]);
        assert!(file.types.contains_key("Unreached"));
    }

    #[test]
    fn query_keeps_only_the_entry_fields_and_what_they_reach() {
        let sdl = format!(
            "{SDL} type Query {{ node(id: ID!): Node orders: [Order] other: Other }} type Other {{ x: String }}"
        );
        let file = extract_from(&sdl, provenance(), &[], &["node"]).unwrap();
        let query = &file.types["Query"];
        assert_eq!(query.fields.keys().collect::<Vec<_>>(), ["node"]);
        assert_eq!(query.arguments["node"]["id"], "ID!");
        assert!(file.types.contains_key("Order") && !file.types.contains_key("Other"));
        let err = extract_from(&sdl, provenance(), &[], &["nodes"]).unwrap_err();
        assert!(
            matches!(err, ExtractError::MissingType(ref t) if t == "Query.nodes"),
            "{err}"
        );
    }

    #[test]
    fn rejects_what_it_cannot_express() {
        let err = extract_from("type A { b: B }", provenance(), &["A"], &[]).unwrap_err();
        assert!(
            matches!(err, ExtractError::MissingType(ref t) if t == "B"),
            "{err}"
        );
        let err = extract_from("type A { b: [[String]] }", provenance(), &["A"], &[]).unwrap_err();
        assert!(matches!(err, ExtractError::NestedList { .. }), "{err}");
        let err = extract_from(
            "type A { b: String } extend type A { c: Int }",
            provenance(),
            &["A"],
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::Extension(_)), "{err}");
        let err = extract_from("type A { b: String", provenance(), &["A"], &[]).unwrap_err();
        assert!(matches!(err, ExtractError::Syntax(_)), "{err}");
        let err = extract(b"type A { b: String }").unwrap_err();
        assert!(matches!(err, ExtractError::UnknownCopy { .. }), "{err}");
    }
}
