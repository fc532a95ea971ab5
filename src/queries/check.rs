//! A query against Marketplacer's schema, before the operator pastes it.
//!
//! Marketplacer rejects a webhook query it cannot run when the webhook is saved, far from the
//! file that holds it; a deprecated field works until the day it is removed. Both are found
//! here, at the field's line, with the same schema data the mapping paths are checked against
//! (`schemas/marketplacer/types.json`, which keeps arguments and deprecations for this). A field
//! kept knowingly despite its deprecation says why in a `# deprecated: …` comment on the line
//! above it, which silences the warning where a reviewer can see the reason.

use super::{ProblemKind, Query, QueryProblem, SelectionSet};
use crate::source::schema::{Kind, MarketplacerSchema, Shape, closest};

/// Every problem of one query: unknown fields, arguments and types, missing required
/// arguments, objects without a selection and scalars with one (errors), and deprecated
/// fields (warnings).
pub fn check(query: &Query, schema: &MarketplacerSchema) -> Vec<QueryProblem> {
    let mut problems = Vec::new();
    selection(&query.selection, "Query", schema, &mut problems);
    // A fragment spread twice is checked twice; its problems are reported once.
    let mut seen = Vec::new();
    problems.retain(|p| {
        let new = !seen.contains(p);
        seen.push(p.clone());
        new
    });
    problems
}

fn selection(
    set: &SelectionSet,
    on_type: &str,
    schema: &MarketplacerSchema,
    problems: &mut Vec<QueryProblem>,
) {
    for field in set.fields.values() {
        let at = field.at;
        let mut report = |kind| problems.push(QueryProblem::new(kind, at));
        if field.name == "__typename" {
            continue;
        }
        let Some(def) = schema.field_def(on_type, &field.name) else {
            report(ProblemKind::UnknownField {
                field: field.name.clone(),
                on_type: on_type.to_owned(),
                suggestion: closest(&field.name, schema.field_names(on_type)),
            });
            continue;
        };
        let declared = def.arguments.cloned().unwrap_or_default();
        for (argument, _) in &field.arguments {
            if !declared.contains_key(argument) {
                report(ProblemKind::UnknownArgument {
                    field: field.name.clone(),
                    on_type: on_type.to_owned(),
                    argument: argument.clone(),
                    known: declared.keys().cloned().collect(),
                });
            }
        }
        for (argument, argument_type) in &declared {
            let given = field.arguments.iter().any(|(name, _)| name == argument);
            if argument_type.ends_with('!') && !given {
                report(ProblemKind::MissingArgument {
                    field: field.name.clone(),
                    on_type: on_type.to_owned(),
                    argument: argument.clone(),
                    argument_type: argument_type.clone(),
                });
            }
        }
        if let Some(reason) = def.deprecated.filter(|_| !field.deprecation_noted) {
            report(ProblemKind::Deprecated {
                field: field.name.clone(),
                on_type: on_type.to_owned(),
                reason: reason.to_owned(),
            });
        }
        let Shape::Typed {
            name: field_type, ..
        } = def.shape
        else {
            continue;
        };
        let composite = matches!(
            schema.kind(&field_type),
            Some(Kind::Object | Kind::Interface | Kind::Union)
        );
        if composite && !field.has_selection {
            report(ProblemKind::NeedsSelection {
                field: field.name.clone(),
                type_name: field_type,
            });
        } else if !composite && field.has_selection {
            report(ProblemKind::LeafSelection {
                field: field.name.clone(),
                type_name: field_type,
            });
        } else if composite {
            selection(&field.selection, &field_type, schema, problems);
            conditions(&field.selection, &field_type, schema, problems);
        }
    }
}

/// The `... on Type` parts of a selection: each type must exist and be one the value can be.
fn conditions(
    set: &SelectionSet,
    on_type: &str,
    schema: &MarketplacerSchema,
    problems: &mut Vec<QueryProblem>,
) {
    for (condition, part) in &set.conditions {
        let Some(first) = part.fields.values().next().map(|f| f.at) else {
            continue;
        };
        if !schema.has_type(condition) {
            problems.push(QueryProblem::new(
                ProblemKind::UnknownType(condition.clone()),
                first,
            ));
            continue;
        }
        let related = condition == on_type
            || schema.possible_types(on_type).contains(condition)
            || schema
                .possible_types(condition)
                .iter()
                .any(|t| t == on_type);
        if !related {
            problems.push(QueryProblem::new(
                ProblemKind::ImpossibleCondition {
                    condition: condition.clone(),
                    on_type: on_type.to_owned(),
                },
                first,
            ));
            continue;
        }
        selection(part, condition, schema, problems);
        conditions(part, condition, schema, problems);
    }
}
