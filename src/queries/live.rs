//! A query copied back from a Marketplacer instance, compared with the effective one.
//!
//! What a webhook delivers is what is registered in Marketplacer, not what is in `queries/`:
//! a query edited here and never pasted there (or pasted for one client and not another)
//! silently starves the mappings. The operator copies the registered query (or exports the
//! webhooks as JSON, each with its `query`), and this says which fields it lacks.

use super::{QueryProblem, QuerySet, SelectionSet};
use serde_json::Value as Json;

/// The queries found in a live copy.
pub struct Live {
    pub queries: QuerySet,
    /// Whether the copy was an export of webhooks (so a type without a query has no webhook).
    pub export: bool,
}

/// Reads a GraphQL document, or a JSON export whose objects carry a `query` string (at any
/// depth: a list of webhooks, or one webhook).
pub fn parse(name: &str, text: &str) -> Result<Live, String> {
    let (documents, export) = match serde_json::from_str::<Json>(text) {
        Ok(json) => {
            let mut found = Vec::new();
            query_fields(&json, &mut found);
            if found.is_empty() {
                return Err("this JSON has no `query` field: export the webhooks with their queries, or copy the query itself".into());
            }
            let documents = found
                .into_iter()
                .enumerate()
                .map(|(i, q)| (format!("{name} (query #{})", i + 1), q))
                .collect();
            (documents, true)
        }
        Err(_) => (vec![(name.to_owned(), text.to_owned())], false),
    };
    let mut queries = QuerySet::default();
    let problems = queries.add(documents, true);
    if let Some(problem) = problems.first() {
        return Err(describe(&queries, problem));
    }
    Ok(Live { queries, export })
}

fn describe(queries: &QuerySet, problem: &QueryProblem) -> String {
    queries.diagnostic(problem).to_string()
}

fn query_fields(json: &Json, found: &mut Vec<String>) {
    match json {
        Json::Object(object) => {
            if let Some(Json::String(query)) = object.get("query") {
                found.push(query.clone());
            }
            for value in object.values() {
                query_fields(value, found);
            }
        }
        Json::Array(items) => items.iter().for_each(|i| query_fields(i, found)),
        _ => {}
    }
}

/// The fields `wanted` selects that `live` does not, each as the response keys from the record
/// down (`... on Advert` for a type condition), the highest missing field of each branch.
pub fn missing(wanted: &SelectionSet, live: &SelectionSet) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    missing_in(wanted, Some(live), &mut Vec::new(), &mut found);
    found
}

fn missing_in(
    wanted: &SelectionSet,
    live: Option<&SelectionSet>,
    keys: &mut Vec<String>,
    found: &mut Vec<Vec<String>>,
) {
    for (key, field) in &wanted.fields {
        keys.push(key.clone());
        match live.and_then(|l| l.find(key)) {
            Some(there) => missing_in(&field.selection, Some(&there.selection), keys, found),
            None => found.push(keys.clone()),
        }
        keys.pop();
    }
    for (type_name, part) in &wanted.conditions {
        keys.push(format!("... on {type_name}"));
        // A live query may select the same fields without the condition, or under it.
        let there = live.and_then(|l| l.conditions.get(type_name)).or(live);
        missing_in(part, there, keys, found);
        keys.pop();
    }
}
