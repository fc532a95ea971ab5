//! Rejects a query as Marketplacer would, before anything runs.
//!
//! Marketplacer's GraphQL server is graphql-ruby: the error it documents for a webhook query
//! (S5 in `notes/marketplacer.md`) is graphql-ruby's `FieldsAreDefinedOnType` error word for
//! word, with its query path (`["query", "node", "... on Advert", "badQuery"]`) and its
//! extensions (`code: undefinedField`, `typeName`, `fieldName`). So the mistakes a client
//! makes most are answered in graphql-ruby's words (its `StaticValidation` rules and
//! `Query::Variables`): an unknown field, an argument a field does not take, a missing required
//! argument, a literal of the wrong type, a fragment on an unknown type or spread where it can
//! never apply, an undeclared or unused variable, a variable of the wrong type, a missing or
//! invalid variable value. Each error carries `message`, `locations`, `path` (graphql-ruby's
//! query path) and `extensions`.
//!
//! Everything else the GraphQL spec forbids is still refused: a document these rules pass is
//! then validated in full by apollo-compiler, whose own message is used for what they do not
//! cover (fields that cannot merge, duplicate names, …).
//!
//! `ISO8601DateTime` values must carry an offset (`2026-11-30T00:00:00+11:00`, or `Z`).
//! graphql-ruby would also take a date, or a time without an offset read in the server's own
//! time zone; the stand-in refuses both rather than guess that zone, since a window off by
//! the server's offset is exactly the mistake a reconciliation client must not make.

use super::data::instant;
use super::schema::schema;
use apollo_compiler::ast::{self, Document, OperationType, Selection, Type, Value};
use apollo_compiler::parser::SourceSpan;
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::{Name, Node};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeSet, HashMap};

/// One GraphQL error, as it goes into the answer's `errors`.
pub(crate) type GraphqlError = Json;

/// A variable used in an argument position, for the checks made once the operation is read.
struct Usage {
    name: Name,
    location: Option<SourceSpan>,
    path: Vec<Json>,
    /// The argument (or input field) it is passed to, and that argument's type.
    argument: Name,
    expected: Type,
}

/// What a definition (operation or fragment) uses: variables, and fragments it spreads.
#[derive(Default)]
struct Uses {
    variables: Vec<Usage>,
    spreads: Vec<Name>,
}

struct Walker<'d> {
    document: &'d Document,
    fragments: HashMap<&'d Name, &'d Node<ast::FragmentDefinition>>,
    errors: Vec<GraphqlError>,
    path: Vec<Json>,
    uses: Uses,
}

/// graphql-ruby's static validation errors for a parsed document, in document order.
pub(crate) fn static_errors(document: &Document) -> Vec<GraphqlError> {
    let fragments = document
        .definitions
        .iter()
        .filter_map(|d| match d {
            ast::Definition::FragmentDefinition(f) => Some((&f.name, f)),
            _ => None,
        })
        .collect();
    let mut walker = Walker {
        document,
        fragments,
        errors: Vec::new(),
        path: Vec::new(),
        uses: Uses::default(),
    };
    walker.document();
    walker.errors
}

impl<'d> Walker<'d> {
    fn error(&mut self, message: String, location: Option<SourceSpan>, extensions: Json) {
        self.error_at(message, location, self.path.clone(), extensions);
    }

    fn error_at(
        &mut self,
        message: String,
        location: Option<SourceSpan>,
        path: Vec<Json>,
        extensions: Json,
    ) {
        let mut error = Map::new();
        error.insert("message".into(), message.into());
        error.insert("locations".into(), locations(self.document, location));
        error.insert("path".into(), Json::Array(path));
        error.insert("extensions".into(), extensions);
        self.errors.push(Json::Object(error));
    }

    fn document(&mut self) {
        let mut fragment_uses: HashMap<&Name, Uses> = HashMap::new();
        let mut operations = Vec::new();
        for definition in &self.document.definitions {
            match definition {
                ast::Definition::OperationDefinition(operation) => {
                    let label = match &operation.name {
                        Some(name) => format!("{} {name}", operation.operation_type),
                        None => operation.operation_type.to_string(),
                    };
                    self.path = vec![label.into()];
                    let root = schema().root_operation(operation.operation_type);
                    match root {
                        Some(root) => self.selections(&operation.selection_set, root.as_str()),
                        None => {
                            let kind = operation.operation_type.to_string();
                            self.error(
                                format!("Schema is not configured for {kind}s"),
                                operation.location(),
                                json!({"code": format!("missing{}Configuration", capitalised(&kind))}),
                            );
                        }
                    }
                    for variable in &operation.variables {
                        self.variable_type(variable);
                    }
                    operations.push((operation, std::mem::take(&mut self.uses)));
                }
                ast::Definition::FragmentDefinition(fragment) => {
                    self.path = vec![format!("fragment {}", fragment.name).into()];
                    if self.condition(&fragment.type_condition, fragment.location()) {
                        self.selections(&fragment.selection_set, fragment.type_condition.as_str());
                    }
                    fragment_uses.insert(&fragment.name, std::mem::take(&mut self.uses));
                }
                other => {
                    self.path = Vec::new();
                    self.error(
                        "Query cannot contain schema definitions".into(),
                        other.location(),
                        json!({"code": "queryContainsSchemaDefinitions"}),
                    );
                }
            }
        }
        // Fragments defined but never spread.
        let spread: BTreeSet<&Name> = operations
            .iter()
            .flat_map(|(_, uses)| &uses.spreads)
            .chain(fragment_uses.values().flat_map(|uses| &uses.spreads))
            .collect();
        for (name, fragment) in &self.fragments.clone() {
            if !spread.contains(name) {
                self.error_at(
                    format!("Fragment {name} was defined, but not used"),
                    fragment.location(),
                    vec![format!("fragment {name}").into()],
                    json!({"code": "useAndDefineFragment", "fragmentName": name.as_str()}),
                );
            }
        }
        for (operation, uses) in operations {
            self.variables(operation, uses, &fragment_uses);
        }
    }

    /// A type condition names a type that exists and has fields.
    fn condition(&mut self, type_name: &Name, location: Option<SourceSpan>) -> bool {
        match schema().types.get(type_name.as_str()) {
            None => {
                self.error(
                    format!("No such type {type_name}, so it can't be a fragment condition"),
                    location,
                    json!({"code": "undefinedType", "typeName": type_name.as_str()}),
                );
                false
            }
            Some(ExtendedType::Object(_) | ExtendedType::Interface(_) | ExtendedType::Union(_)) => {
                true
            }
            Some(_) => {
                self.error(
                    format!(
                        "Invalid fragment on type {type_name} (must be Union, Interface or Object)"
                    ),
                    location,
                    json!({"code": "fragmentOnNonCompositeType", "typeName": type_name.as_str()}),
                );
                false
            }
        }
    }

    fn selections(&mut self, selections: &'d [Selection], parent: &str) {
        for selection in selections {
            match selection {
                Selection::Field(field) => self.field(field, parent),
                Selection::InlineFragment(fragment) => {
                    let label = match &fragment.type_condition {
                        Some(condition) => format!("... on {condition}"),
                        None => "...".to_owned(),
                    };
                    self.path.push(label.into());
                    let on = match &fragment.type_condition {
                        None => Some(parent.to_owned()),
                        Some(condition) => (self.condition(condition, fragment.location())
                            && self.spreadable(None, condition, parent, fragment.location()))
                        .then(|| condition.to_string()),
                    };
                    if let Some(on) = on {
                        self.selections(&fragment.selection_set, &on);
                    }
                    self.path.pop();
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.fragment_name;
                    self.path.push(format!("... {name}").into());
                    self.uses.spreads.push(name.clone());
                    match self.fragments.get(name).copied() {
                        None => self.error(
                            format!("Fragment {name} was used, but not defined"),
                            spread.location(),
                            json!({"code": "useAndDefineFragment", "fragmentName": name.as_str()}),
                        ),
                        Some(fragment) => {
                            let condition = &fragment.type_condition;
                            if schema().types.contains_key(condition.as_str()) {
                                self.spreadable(Some(name), condition, parent, spread.location());
                            }
                        }
                    }
                    self.path.pop();
                }
            }
        }
    }

    /// A fragment on `condition` can apply inside `parent`: their possible types overlap.
    fn spreadable(
        &mut self,
        name: Option<&Name>,
        condition: &Name,
        parent: &str,
        location: Option<SourceSpan>,
    ) -> bool {
        let possible = |t: &str| -> BTreeSet<String> {
            match schema().types.get(t) {
                Some(ExtendedType::Object(_)) => [t.to_owned()].into(),
                Some(ExtendedType::Interface(_)) => super::schema::implementers()
                    .get(t)
                    .map(|i| i.objects.iter().map(|o| o.to_string()).collect())
                    .unwrap_or_default(),
                Some(ExtendedType::Union(union)) => {
                    union.members.iter().map(|m| m.to_string()).collect()
                }
                _ => BTreeSet::new(),
            }
        };
        if !matches!(
            schema().types.get(condition.as_str()),
            Some(ExtendedType::Object(_) | ExtendedType::Interface(_) | ExtendedType::Union(_))
        ) {
            return false;
        }
        if possible(condition.as_str()).is_disjoint(&possible(parent)) {
            let shown = name.map(|n| format!(" {n}")).unwrap_or_default();
            self.error(
                format!("Fragment{shown} on {condition} can't be spread inside {parent}"),
                location,
                json!({
                    "code": "cannotSpreadFragment",
                    "typeName": condition.as_str(),
                    "fragmentName": if shown.is_empty() { "unknown".to_owned() } else { shown },
                    "parentName": parent,
                }),
            );
            return false;
        }
        true
    }

    fn field(&mut self, field: &'d Node<ast::Field>, parent: &str) {
        let key = field.alias.as_ref().unwrap_or(&field.name);
        self.path.push(key.as_str().into());
        self.field_inner(field, parent);
        self.path.pop();
    }

    fn field_inner(&mut self, field: &'d Node<ast::Field>, parent: &str) {
        let name = field.name.as_str();
        if name.starts_with("__") {
            // `__typename` anywhere, `__schema` and `__type` on the root: apollo-compiler
            // validates introspection in full afterwards.
            return;
        }
        if let Some(ExtendedType::Union(_)) = schema().types.get(parent) {
            self.error(
                format!("Selections can't be made directly on unions (see selections on {parent})"),
                field.location(),
                json!({"code": "selectionMismatch", "nodeName": parent}),
            );
            return;
        }
        let Ok(definition) = schema().type_field(parent, name) else {
            self.error(
                format!("Field '{name}' doesn't exist on type '{parent}'"),
                field.location(),
                json!({"code": "undefinedField", "typeName": parent, "fieldName": name}),
            );
            return;
        };
        let key = field.alias.as_ref().unwrap_or(&field.name).to_string();
        for argument in &field.arguments {
            self.path.push(argument.name.as_str().into());
            match definition
                .arguments
                .iter()
                .find(|a| a.name == argument.name)
            {
                None => self.error(
                    format!("Field '{key}' doesn't accept argument '{}'", argument.name),
                    argument.location(),
                    json!({
                        "code": "argumentNotAccepted",
                        "name": key,
                        "typeName": "Field",
                        "argumentName": argument.name.as_str(),
                    }),
                ),
                Some(declared) => {
                    self.argument(
                        &argument.name,
                        &argument.value,
                        &declared.ty,
                        ("Field", &key),
                        field.location(),
                    );
                }
            }
            self.path.pop();
        }
        let missing: Vec<&str> = definition
            .arguments
            .iter()
            .filter(|a| a.ty.is_non_null() && a.default_value.is_none())
            .filter(|a| !field.arguments.iter().any(|given| given.name == a.name))
            .map(|a| a.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.error(
                format!(
                    "Field '{name}' is missing required arguments: {}",
                    missing.join(", ")
                ),
                field.location(),
                json!({
                    "code": "missingRequiredArguments",
                    "className": "Field",
                    "name": name,
                    "arguments": missing.join(", "),
                }),
            );
        }
        let field_type = definition.ty.inner_named_type();
        let leaf = matches!(
            schema().types.get(field_type.as_str()),
            Some(ExtendedType::Scalar(_) | ExtendedType::Enum(_))
        );
        let node_name = format!("field '{name}'");
        if leaf && !field.selection_set.is_empty() {
            let kind = match schema().types.get(field_type.as_str()) {
                Some(ExtendedType::Enum(_)) => "enums",
                _ => "scalars",
            };
            let selected: Vec<String> = field
                .selection_set
                .iter()
                .map(|s| match s {
                    Selection::Field(f) => format!("\"{}\"", f.name),
                    Selection::FragmentSpread(s) => format!("\"{}\"", s.fragment_name),
                    Selection::InlineFragment(f) => format!(
                        "\"... on {} {{ ... }}\"",
                        f.type_condition.as_ref().map_or("", |c| c.as_str())
                    ),
                })
                .collect();
            self.error(
                format!(
                    "Selections can't be made on {kind} ({node_name} returns {field_type} but has selections [{}])",
                    selected.join(", ")
                ),
                field.location(),
                json!({"code": "selectionMismatch", "nodeName": node_name, "typeName": field_type.as_str()}),
            );
        } else if !leaf && field.selection_set.is_empty() {
            self.error(
                format!(
                    "Field must have selections ({node_name} returns {field_type} but has no selections. Did you mean '{name} {{ ... }}'?)"
                ),
                field.location(),
                json!({"code": "selectionMismatch", "nodeName": node_name, "typeName": field_type.as_str()}),
            );
        } else if !leaf {
            self.selections(&field.selection_set, field_type.as_str());
        }
    }

    /// An argument (or an input object's field) given `value` where `ty` is declared, on
    /// `owner` (`("Field", key)` or `("InputObject", type)`). Returns whether an error was
    /// found in it.
    fn argument(
        &mut self,
        name: &Name,
        value: &'d Node<Value>,
        ty: &Type,
        owner: (&str, &str),
        location: Option<SourceSpan>,
    ) -> bool {
        if let Value::Variable(variable) = &**value {
            self.uses.variables.push(Usage {
                name: variable.clone(),
                location: value.location(),
                path: self.path.clone(),
                argument: name.clone(),
                expected: ty.clone(),
            });
            return false;
        }
        let before = self.errors.len();
        // Inside first: an unknown or missing input field, or a bad value deeper in.
        let named = ty.inner_named_type();
        if let (Some(ExtendedType::InputObject(input)), Value::Object(fields)) =
            (schema().types.get(named.as_str()), &**value)
            && !ty.is_list()
        {
            for (field_name, field_value) in fields {
                self.path.push(field_name.as_str().into());
                match input.fields.get(field_name) {
                    None => self.error(
                        format!("InputObject '{named}' doesn't accept argument '{field_name}'"),
                        field_value.location(),
                        json!({
                            "code": "argumentNotAccepted",
                            "name": named.as_str(),
                            "typeName": "InputObject",
                            "argumentName": field_name.as_str(),
                        }),
                    ),
                    Some(declared) => {
                        self.argument(
                            field_name,
                            field_value,
                            &declared.ty,
                            ("InputObject", named.as_str()),
                            field_value.location(),
                        );
                    }
                }
                self.path.pop();
            }
            for (field_name, declared) in &input.fields {
                let required = declared.ty.is_non_null() && declared.default_value.is_none();
                if required && !fields.iter().any(|(given, _)| given == field_name) {
                    let mut path = self.path.clone();
                    path.push(field_name.as_str().into());
                    self.error_at(
                        format!(
                            "Argument '{field_name}' on InputObject '{named}' is required. Expected type {}",
                            declared.ty
                        ),
                        value.location(),
                        path,
                        json!({
                            "code": "missingRequiredInputObjectAttribute",
                            "argumentName": field_name.as_str(),
                            "argumentType": declared.ty.to_string(),
                            "inputObjectType": named.as_str(),
                        }),
                    );
                }
            }
        } else if let (true, Value::List(items)) = (ty.is_list(), &**value) {
            for (index, item) in items.iter().enumerate() {
                self.path.push(index.into());
                self.argument(name, item, ty.item_type(), owner, location);
                self.path.pop();
            }
        }
        if self.errors.len() > before {
            return true;
        }
        if !valid_literal(value, ty) {
            self.error(
                format!(
                    "Argument '{name}' on {} '{}' has an invalid value ({value}). Expected type '{ty}'.",
                    owner.0, owner.1
                ),
                location,
                json!({
                    "code": "argumentLiteralsIncompatible",
                    "typeName": owner.0,
                    "argumentName": name.as_str(),
                }),
            );
            return true;
        }
        false
    }

    /// A variable's declared type exists and is an input type.
    fn variable_type(&mut self, variable: &Node<ast::VariableDefinition>) {
        let named = variable.ty.inner_named_type();
        let problem = match schema().types.get(named.as_str()) {
            None => "defined",
            Some(
                ExtendedType::Scalar(_) | ExtendedType::Enum(_) | ExtendedType::InputObject(_),
            ) => {
                return;
            }
            Some(_) => "valid",
        };
        self.error(
            format!(
                "{} isn't a {problem} input type (on ${})",
                variable.ty, variable.name
            ),
            variable.location(),
            json!({"code": "variableRequiresValidType", "typeName": variable.ty.to_string(), "variableName": variable.name.as_str()}),
        );
    }

    /// Variables of one operation: used but not declared, declared but not used, used where
    /// their type cannot go. Fragments it spreads count, however deep.
    fn variables(
        &mut self,
        operation: &'d Node<ast::OperationDefinition>,
        uses: Uses,
        fragments: &HashMap<&Name, Uses>,
    ) {
        let by = operation.name.as_ref().map_or_else(
            || format!("anonymous {}", operation.operation_type),
            |n| n.to_string(),
        );
        let mut usages: Vec<&Usage> = uses.variables.iter().collect();
        let mut pending: Vec<&Name> = uses.spreads.iter().collect();
        let mut visited = BTreeSet::new();
        while let Some(name) = pending.pop() {
            if !visited.insert(name) {
                continue;
            }
            if let Some(fragment) = fragments.get(name) {
                usages.extend(&fragment.variables);
                pending.extend(&fragment.spreads);
            }
        }
        let label = self.path_label(operation);
        for declared in &operation.variables {
            if !usages.iter().any(|u| u.name == declared.name) {
                self.error_at(
                    format!(
                        "Variable ${} is declared by {by} but not used",
                        declared.name
                    ),
                    operation.location(),
                    vec![label.clone()],
                    json!({"code": "variableNotUsed", "variableName": declared.name.as_str()}),
                );
            }
        }
        let mut reported = BTreeSet::new();
        for usage in usages {
            match operation.variables.iter().find(|d| d.name == usage.name) {
                None => {
                    if reported.insert(usage.name.clone()) {
                        self.error_at(
                            format!("Variable ${} is used by {by} but not declared", usage.name),
                            usage.location,
                            usage.path.clone(),
                            json!({"code": "variableNotDefined", "variableName": usage.name.as_str()}),
                        );
                    }
                }
                Some(declared) => {
                    if let Some(problem) = mismatch(
                        &declared.ty,
                        declared
                            .default_value
                            .as_ref()
                            .is_some_and(|v| !matches!(**v, Value::Null)),
                        &usage.expected,
                    ) {
                        self.error_at(
                            format!(
                                "{problem} on variable ${} and argument {} ({} / {})",
                                usage.name, usage.argument, declared.ty, usage.expected
                            ),
                            usage.location,
                            usage.path.clone(),
                            json!({
                                "code": "variableMismatch",
                                "variableName": usage.name.as_str(),
                                "typeName": declared.ty.to_string(),
                                "argumentName": usage.argument.as_str(),
                                "errorMessage": problem,
                            }),
                        );
                    }
                }
            }
        }
    }

    fn path_label(&self, operation: &ast::OperationDefinition) -> Json {
        match &operation.name {
            Some(name) => format!("{} {name}", operation.operation_type).into(),
            None => operation.operation_type.to_string().into(),
        }
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Why a variable of type `variable` cannot be passed where `expected` is declared
/// (graphql-ruby's three words for it), or None when it can.
fn mismatch(variable: &Type, has_default: bool, expected: &Type) -> Option<&'static str> {
    if variable.inner_named_type() != expected.inner_named_type() {
        return Some("Type mismatch");
    }
    fn depth(ty: &Type) -> usize {
        if ty.is_list() {
            1 + depth(ty.item_type())
        } else {
            0
        }
    }
    if depth(variable) != depth(expected) {
        return Some("List dimension mismatch");
    }
    fn nullability_ok(variable: &Type, expected: &Type, top_default: bool) -> bool {
        let outer = !expected.is_non_null() || variable.is_non_null() || top_default;
        outer
            && (!expected.is_list()
                || nullability_ok(variable.item_type(), expected.item_type(), false))
    }
    (!nullability_ok(variable, expected, has_default)).then_some("Nullability mismatch")
}

fn locations(document: &Document, location: Option<SourceSpan>) -> Json {
    Json::Array(
        location
            .and_then(|l| l.line_column(&document.sources))
            .map(|lc| json!({"line": lc.line, "column": lc.column}))
            .into_iter()
            .collect(),
    )
}

/// Whether a literal (no variables in it) can be coerced to `ty`.
fn valid_literal(value: &Value, ty: &Type) -> bool {
    if let Value::Variable(_) = value {
        return true;
    }
    if let Value::Null = value {
        return !ty.is_non_null();
    }
    if ty.is_list() {
        return match value {
            Value::List(items) => items.iter().all(|i| valid_literal(i, ty.item_type())),
            single => valid_literal(single, ty.item_type()),
        };
    }
    let named = ty.inner_named_type().as_str();
    match schema().types.get(named) {
        Some(ExtendedType::Enum(definition)) => {
            matches!(value, Value::Enum(v) if definition.values.contains_key(v))
        }
        Some(ExtendedType::InputObject(input)) => match value {
            Value::Object(fields) => {
                fields.iter().all(|(name, v)| {
                    input
                        .fields
                        .get(name)
                        .is_some_and(|declared| valid_literal(v, &declared.ty))
                }) && input.fields.iter().all(|(name, declared)| {
                    !(declared.ty.is_non_null() && declared.default_value.is_none())
                        || fields.iter().any(|(given, _)| given == name)
                })
            }
            _ => false,
        },
        Some(ExtendedType::Scalar(_)) => valid_scalar_literal(named, value),
        _ => false,
    }
}

fn valid_scalar_literal(named: &str, value: &Value) -> bool {
    match (named, value) {
        ("Int", Value::Int(i)) => i.try_to_i32().is_ok(),
        ("Float", Value::Int(_) | Value::Float(_)) => true,
        ("String", Value::String(_)) => true,
        ("Boolean", Value::Boolean(_)) => true,
        ("ID", Value::String(_) | Value::Int(_)) => true,
        ("ISO8601DateTime", Value::String(text)) => instant(text).is_some(),
        ("ISO8601Date", Value::String(text)) => {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
        }
        ("Int" | "Float" | "String" | "Boolean" | "ID" | "ISO8601DateTime" | "ISO8601Date", _) => {
            false
        }
        // JSON and the other custom scalars take any literal.
        _ => true,
    }
}

/// graphql-ruby's check of the variable values a request sends, against the operation's
/// declarations: each value missing, null or of the wrong type for a non-null variable is
/// one error naming the variable, with the problems under `extensions`.
pub(crate) fn variable_errors(
    document: &Document,
    operation: &Node<ast::OperationDefinition>,
    values: &Map<String, Json>,
) -> Vec<GraphqlError> {
    let mut errors = Vec::new();
    for declared in &operation.variables {
        let given = values.get(declared.name.as_str());
        let problems = match given {
            None if declared.default_value.is_some() => continue,
            None if declared.ty.is_non_null() => {
                vec![(Vec::new(), "Expected value to not be null".to_owned())]
            }
            None => continue,
            Some(value) => value_problems(value, &declared.ty, Vec::new()),
        };
        if problems.is_empty() {
            continue;
        }
        let value = given.cloned().unwrap_or(Json::Null);
        errors.push(json!({
            "message": format!(
                "Variable ${} of type {} was provided invalid value",
                declared.name, declared.ty
            ),
            "locations": locations(document, declared.location()),
            "extensions": {
                "value": value,
                "problems": problems
                    .into_iter()
                    .map(|(path, explanation)| json!({"path": path, "explanation": explanation}))
                    .collect::<Vec<_>>(),
            }
        }));
    }
    errors
}

/// What is wrong with a JSON value for `ty`, each with its path inside the value.
fn value_problems(value: &Json, ty: &Type, path: Vec<Json>) -> Vec<(Vec<Json>, String)> {
    if value.is_null() {
        return if ty.is_non_null() {
            vec![(path, "Expected value to not be null".to_owned())]
        } else {
            Vec::new()
        };
    }
    if ty.is_list() {
        return match value {
            Json::Array(items) => items
                .iter()
                .enumerate()
                .flat_map(|(index, item)| {
                    let mut path = path.clone();
                    path.push(index.into());
                    value_problems(item, ty.item_type(), path)
                })
                .collect(),
            single => value_problems(single, ty.item_type(), path),
        };
    }
    let named = ty.inner_named_type().as_str();
    let could_not = || {
        vec![(
            path.clone(),
            format!("Could not coerce value {value} to {named}"),
        )]
    };
    match schema().types.get(named) {
        Some(ExtendedType::Enum(definition)) => match value.as_str() {
            Some(v) if definition.values.keys().any(|k| k.as_str() == v) => Vec::new(),
            _ => vec![(
                path,
                format!(
                    "Expected {value} to be one of: {}",
                    definition
                        .values
                        .keys()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )],
        },
        Some(ExtendedType::InputObject(input)) => {
            let Json::Object(fields) = value else {
                return could_not();
            };
            let mut problems = Vec::new();
            for (name, field_value) in fields {
                let mut field_path = path.clone();
                field_path.push(name.as_str().into());
                match input.fields.iter().find(|(n, _)| n.as_str() == name) {
                    None => problems.push((field_path, format!("Field is not defined on {named}"))),
                    Some((_, declared)) => {
                        problems.extend(value_problems(field_value, &declared.ty, field_path))
                    }
                }
            }
            for (name, declared) in &input.fields {
                if declared.ty.is_non_null()
                    && declared.default_value.is_none()
                    && !fields.contains_key(name.as_str())
                {
                    let mut field_path = path.clone();
                    field_path.push(name.as_str().into());
                    problems.push((field_path, "Expected value to not be null".to_owned()));
                }
            }
            problems
        }
        Some(ExtendedType::Scalar(_)) => {
            let ok = match (named, value) {
                ("Int", Json::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
                ("Float", Json::Number(_)) => true,
                ("String", Json::String(_)) => true,
                ("Boolean", Json::Bool(_)) => true,
                ("ID", Json::String(_)) => true,
                ("ID", Json::Number(n)) => n.is_i64(),
                ("ISO8601DateTime", Json::String(text)) => instant(text).is_some(),
                ("ISO8601Date", Json::String(text)) => {
                    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
                }
                (
                    "Int" | "Float" | "String" | "Boolean" | "ID" | "ISO8601DateTime"
                    | "ISO8601Date",
                    _,
                ) => false,
                _ => true,
            };
            if ok { Vec::new() } else { could_not() }
        }
        _ => could_not(),
    }
}

/// The operation a request names (graphql-ruby's messages when it cannot be chosen).
pub(crate) fn choose_operation<'d>(
    document: &'d Document,
    name: Option<&str>,
) -> Result<&'d Node<ast::OperationDefinition>, String> {
    let operations: Vec<&Node<ast::OperationDefinition>> = document
        .definitions
        .iter()
        .filter_map(|d| match d {
            ast::Definition::OperationDefinition(o) => Some(o),
            _ => None,
        })
        .collect();
    match name {
        Some(name) => operations
            .into_iter()
            .find(|o| o.name.as_ref().is_some_and(|n| n == name))
            .ok_or_else(|| format!("No operation named \"{name}\"")),
        None => match operations.as_slice() {
            [] => Err("No query string was present".to_owned()),
            [one] => Ok(one),
            _ => Err("An operation name is required".to_owned()),
        },
    }
}

/// Whether an operation is a mutation or subscription (the stand-in answers queries only).
pub(crate) fn is_query(operation: &ast::OperationDefinition) -> bool {
    operation.operation_type == OperationType::Query
}
