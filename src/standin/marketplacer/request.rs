//! One GraphQL request, from body to answer: parse, validate (graphql-ruby's rules, then the
//! spec's in full), pick the operation, check the variables, execute.
//!
//! A request that fails before execution is answered `{"errors": […]}` with no `data`, as
//! graphql-ruby answers; one that executes is answered `{"data": …}`, with `errors` beside it
//! when a field failed (its `path` says which).

use super::execute::{Ctx, root};
use super::schema::schema;
use super::validate::{self, GraphqlError};
use apollo_compiler::ExecutableDocument;
use apollo_compiler::ast::{Document, Selection};
use apollo_compiler::resolvers::Execution;
use apollo_compiler::response::{JsonMap, JsonValue};
use serde_json::{Map, Value as Json, json};

/// What one request asked for, as the stand-in's stats record it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Asked {
    /// `operationName`, or the operation's own name.
    pub operation: Option<String>,
    /// The root fields the operation selects, in order (`invoices`, `siteConfig`).
    pub root_fields: Vec<String>,
    /// The variables as sent.
    pub variables: Json,
    /// Whether the answer carried `errors`.
    pub errors: bool,
}

/// How a body was answered: HTTP 400 for a body that is not a GraphQL request at all, else 200
/// with the GraphQL response.
pub(crate) struct Answer {
    pub(crate) bad_request: bool,
    pub(crate) body: Json,
    pub(crate) asked: Asked,
}

fn errors_only(errors: Vec<GraphqlError>, asked: Asked) -> Answer {
    Answer {
        bad_request: false,
        body: json!({ "errors": errors }),
        asked: Asked {
            errors: true,
            ..asked
        },
    }
}

fn message(text: impl Into<String>) -> GraphqlError {
    json!({ "message": text.into() })
}

pub(crate) fn answer(ctx: &Ctx<'_>, body: &[u8]) -> Answer {
    let mut asked = Asked {
        operation: None,
        root_fields: Vec::new(),
        variables: Json::Null,
        errors: false,
    };
    let request: Json = match serde_json::from_slice(body) {
        Ok(Json::Object(request)) => Json::Object(request),
        Ok(_) | Err(_) => {
            return Answer {
                bad_request: true,
                body: json!({"errors": [message(
                    "The request body must be a JSON object: {\"query\": …, \"variables\": …, \"operationName\": …}"
                )]}),
                asked: Asked {
                    errors: true,
                    ..asked
                },
            };
        }
    };
    let operation_name = request
        .get("operationName")
        .and_then(Json::as_str)
        .map(str::to_owned);
    asked.operation = operation_name.clone();
    let variables = match request.get("variables") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(v)) => v.clone(),
        // Some clients send the variables as a JSON string; Rails controllers commonly accept it.
        Some(Json::String(text)) if text.trim().is_empty() => Map::new(),
        Some(Json::String(text)) => match serde_json::from_str(text) {
            Ok(Json::Object(v)) => v,
            _ => {
                return errors_only(vec![message("`variables` is not a JSON object")], asked);
            }
        },
        Some(_) => {
            return errors_only(vec![message("`variables` is not a JSON object")], asked);
        }
    };
    asked.variables = Json::Object(variables.clone());
    let Some(query) = request
        .get("query")
        .and_then(Json::as_str)
        .filter(|q| !q.trim().is_empty())
    else {
        return errors_only(vec![message("No query string was present")], asked);
    };
    let document = match Document::parse(query, "query.graphql") {
        Ok(document) => document,
        Err(with_errors) => {
            let errors = with_errors
                .errors
                .iter()
                .map(|diagnostic| to_json(&diagnostic.to_json()))
                .collect();
            return errors_only(errors, asked);
        }
    };
    let operation = validate::choose_operation(&document, operation_name.as_deref());
    if let Ok(operation) = operation {
        asked.operation = operation.name.as_ref().map(|n| n.to_string());
        asked.root_fields = root_fields(&document, &operation.selection_set);
    }
    let errors = validate::static_errors(&document);
    if !errors.is_empty() {
        return errors_only(errors, asked);
    }
    let executable = match ExecutableDocument::parse_and_validate(schema(), query, "query.graphql")
    {
        Ok(executable) => executable,
        Err(with_errors) => {
            let errors = with_errors
                .errors
                .iter()
                .map(|diagnostic| to_json(&diagnostic.to_json()))
                .collect();
            return errors_only(errors, asked);
        }
    };
    let operation = match operation {
        Ok(operation) => operation,
        Err(text) => return errors_only(vec![message(text)], asked),
    };
    if !validate::is_query(operation) {
        return errors_only(
            vec![message(format!(
                "The Marketplacer stand-in answers queries only: a {} changes data it only replays",
                operation.operation_type
            ))],
            asked,
        );
    }
    let errors = validate::variable_errors(&document, operation, &variables);
    if !errors.is_empty() {
        return errors_only(errors, asked);
    }
    let raw: JsonMap = match JsonValue::from(Json::Object(variables)) {
        JsonValue::Object(map) => map,
        _ => JsonMap::new(),
    };
    let execution = match Execution::new(schema(), &executable)
        .implementers_map(super::schema::implementers())
        .operation_name(operation.name.as_ref().map(|n| n.as_str()))
    {
        Ok(execution) => execution,
        Err(error) => {
            return errors_only(
                vec![to_json(&error.to_graphql_error(&executable.sources))],
                asked,
            );
        }
    };
    let root = root(ctx);
    let result = execution
        .raw_variable_values(&raw)
        .enable_schema_introspection(true)
        .execute_sync(&root);
    match result {
        Ok(mut response) => {
            // A resolver's message as it is, as graphql-ruby answers an ExecutionError.
            for error in &mut response.errors {
                if let Some(message) = error.message.strip_prefix("resolver error: ") {
                    error.message = message.to_owned();
                }
            }
            let body = serde_json::to_value(&response).unwrap_or_else(|e| {
                json!({"errors": [message(format!("the stand-in could not write its answer: {e}"))]})
            });
            asked.errors = !response.errors.is_empty();
            Answer {
                bad_request: false,
                body,
                asked,
            }
        }
        Err(error) => errors_only(
            vec![to_json(&error.to_graphql_error(&executable.sources))],
            asked,
        ),
    }
}

fn to_json(error: &apollo_compiler::response::GraphQLError) -> GraphqlError {
    serde_json::to_value(error).unwrap_or_else(|_| message(error.message.clone()))
}

/// The root fields an operation selects, through fragments.
fn root_fields(document: &Document, selections: &[Selection]) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending: Vec<&[Selection]> = vec![selections];
    let mut depth = 0;
    while let Some(set) = pending.pop() {
        depth += 1;
        if depth > 64 {
            break;
        }
        for selection in set {
            match selection {
                Selection::Field(field) => {
                    if !names.iter().any(|n| n == field.name.as_str()) {
                        names.push(field.name.to_string());
                    }
                }
                Selection::InlineFragment(fragment) => pending.push(&fragment.selection_set),
                Selection::FragmentSpread(spread) => {
                    for definition in &document.definitions {
                        if let apollo_compiler::ast::Definition::FragmentDefinition(fragment) =
                            definition
                            && fragment.name == spread.fragment_name
                        {
                            pending.push(&fragment.selection_set);
                        }
                    }
                }
            }
        }
    }
    names
}
