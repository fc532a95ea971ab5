//! The rules of `settings.yaml` and `client.yaml` beyond their shape.
//!
//! serde checks keys and types; these check values, so that a setting that would fail at run
//! time (a zero rate limit, a currency Klaviyo does not know, an endpoint misspelt) fails
//! `validate` instead, at the line the consultant wrote. They are the rules
//! `schemas/settings.schema.json` and `schemas/client.schema.json` state (so the editor and
//! `validate` agree), and those a schema cannot state: a currency that exists, a metric role
//! some mapping reads, a default marketplace that is one of the marketplaces.
//!
//! Values are read from each file's own YAML tree, not from the merged settings, so every
//! problem is reported in the file that holds it. Nothing here changes a value: a currency
//! written `nzd` is an error with the fix, as the schema's `^[A-Z]{3}$` says, rather than
//! quietly becoming `NZD` in one place and not another.

use super::{BodyNode, Spanned};
use crate::diagnostic::{Diagnostic, Files, Position};
use crate::klaviyo::Endpoint;
use std::collections::BTreeSet;

/// Which file a tree was read from: they share most keys, and differ in a few.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Settings,
    Client,
}

/// Every rule broken in one settings or client file. `roles_read` are the metric roles the
/// set's mappings read (`None` when a mapping reads `metrics` as a whole, so any role may be
/// used): a client's role no mapping reads is a slip, while the base settings may name roles
/// for mappings a folder does not hold; `marketplaces` are those of the base settings, for a client that names a default
/// marketplace without listing its own.
pub(super) fn check(
    kind: Kind,
    tree: &Spanned<BodyNode>,
    text: &str,
    roles_read: Option<&BTreeSet<String>>,
    base_marketplaces: &[String],
    consent_readers: &[String],
    files: &Files,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let BodyNode::Map(top) = &tree.value else {
        return out;
    };
    let mut error = |at: Position, message: String| out.push(files.error(at, message));
    let key_at = |key: &str, value: &Spanned<BodyNode>| key_position(text, key, value.at);

    if let Some(value) = top.get("currency") {
        currency(value, "currency", &mut error);
    }
    let own_marketplaces: Vec<String> = match top.get("marketplaces").map(|m| &m.value) {
        Some(BodyNode::Map(marketplaces)) => {
            for (name, marketplace) in marketplaces {
                if name.trim().is_empty() {
                    error(
                        key_at(name, marketplace),
                        "a marketplace needs a name: the Marketplacer-Vertical of its webhooks"
                            .into(),
                    );
                }
                if let BodyNode::Map(fields) = &marketplace.value
                    && let Some(value) = fields.get("currency")
                {
                    currency(
                        value,
                        &format!("marketplace `{name}`: currency"),
                        &mut error,
                    );
                }
            }
            marketplaces.keys().cloned().collect()
        }
        _ => Vec::new(),
    };
    let default_key = match kind {
        Kind::Settings => "marketplace",
        Kind::Client => "default_marketplace",
    };
    if let Some(value) = top.get(default_key)
        && let BodyNode::String(name) = &value.value
    {
        let listed = if own_marketplaces.is_empty() {
            base_marketplaces
        } else {
            &own_marketplaces
        };
        if name.trim().is_empty() {
            error(
                value.at,
                format!(
                    "`{default_key}` is empty: it names the marketplace of deliveries that name none, and begins every unique_id ({})",
                    one_of(listed)
                ),
            );
        } else if kind == Kind::Client && !listed.is_empty() && !listed.contains(name) {
            error(
                value.at,
                format!(
                    "`default_marketplace: {name}` is not one of the marketplaces ({})",
                    listed.join(", ")
                ),
            );
        }
    }
    if let Some(value) = top.get("phone_region") {
        pattern(
            value,
            "phone_region",
            is_region,
            "an ISO 3166 country code in capitals, such as AU or NZ",
            &mut error,
        );
    }
    if let Some(value) = top.get("klaviyo_api_key_env") {
        pattern(
            value,
            "klaviyo_api_key_env",
            is_identifier,
            "an environment variable name: letters, digits and `_`, not starting with a digit (the key itself never goes in a file)",
            &mut error,
        );
    }
    if let Some(Spanned {
        value: BodyNode::Map(consent),
        ..
    }) = top.get("consent")
        && let Some(path) = consent.get("path")
    {
        pattern(
            path,
            "consent.path",
            |p| p.trim_start().starts_with('$'),
            "a JSONPath starting with `$`",
            &mut error,
        );
        // The path is put into the selections of the mappings that read it; one it cannot
        // parse would be reported there, in a base file the consultant did not write.
        if let BodyNode::String(text) = &path.value
            && text.trim_start().starts_with('$')
            && let Err(message) = crate::engine::select::Path::parse(text)
        {
            let readers = match consent_readers {
                [] => String::new(),
                names => format!(
                    " (read by mapping {})",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            error(path.at, format!("consent.path{readers}: {message}"));
        }
    }
    if let Some(Spanned {
        value: BodyNode::Map(metrics),
        ..
    }) = top.get("metrics")
    {
        for (role, name) in metrics {
            let at = key_at(role, name);
            if !is_identifier(role) {
                error(
                    at,
                    format!(
                        "metric role `{role}` must be letters, digits and `_` (mappings read it as `settings.metrics.{role}`)"
                    ),
                );
            } else if kind == Kind::Client
                && let Some(read) = roles_read
                && !read.contains(role)
            {
                error(
                    at,
                    format!(
                        "no mapping reads metric role `{role}`, so this name would never be sent{}",
                        did_you_mean(role, read.iter().map(String::as_str))
                    ),
                );
            }
            pattern(
                name,
                &format!("metrics.{role}"),
                |n| !n.trim().is_empty(),
                "a Klaviyo metric name",
                &mut error,
            );
        }
    }
    if let Some(Spanned {
        value: BodyNode::Map(attributes),
        ..
    }) = top.get("profile_attributes")
    {
        for (property, path) in attributes {
            if property.trim().is_empty() {
                error(
                    key_at(property, path),
                    "a profile attribute needs a property name".into(),
                );
            }
            pattern(
                path,
                &format!("profile_attributes.{property}"),
                |p| !p.trim().is_empty(),
                "a JSONPath into the record",
                &mut error,
            );
        }
    }
    if let Some(value) = top.get("profile_mapping") {
        pattern(
            value,
            "profile_mapping",
            |p| !p.trim().is_empty(),
            "the name of a mapping",
            &mut error,
        );
    }
    if let Some(Spanned {
        value: BodyNode::Map(limits),
        ..
    }) = top.get("rate_limits")
    {
        for (path, limit) in limits {
            if Endpoint::parse(path).is_none() {
                let known = Endpoint::ALL.map(Endpoint::path);
                error(
                    key_at(path, limit),
                    format!(
                        "rate_limits: `{path}` is not an endpoint marketsync sends to{}; the endpoints are {}",
                        did_you_mean(path, known.into_iter()),
                        known.join(", ")
                    ),
                );
            }
            let BodyNode::Map(windows) = &limit.value else {
                continue;
            };
            for (window, per) in [("burst", "a second"), ("steady", "a minute")] {
                if let Some(value) = windows.get(window)
                    && matches!(&value.value, BodyNode::Number(n) if n.as_u64() == Some(0))
                {
                    error(
                        value.at,
                        format!(
                            "rate_limits `{path}`: `{window}: 0` would never let a request through; give the requests allowed {per}, at least 1"
                        ),
                    );
                }
            }
        }
    }
    if let Some(alerts) = top.get("alerts")
        && let BodyNode::Map(fields) = &alerts.value
    {
        if let Some(value) = fields.get("slack_webhook_env") {
            pattern(
                value,
                "alerts.slack_webhook_env",
                is_identifier,
                "an environment variable name: letters, digits and `_`, not starting with a digit (the webhook URL itself never goes in a file)",
                &mut error,
            );
        }
        let command = fields.get("command");
        if let Some(value) = command
            && matches!(&value.value, BodyNode::List(items) if items.is_empty())
        {
            error(
                value.at,
                "alerts.command is empty: give the program and its arguments, such as [/usr/local/bin/page-ops, --team, ecommerce]".into(),
            );
        }
        if command.is_none() && !fields.contains_key("slack_webhook_env") {
            error(
                key_at("alerts", alerts),
                "alerts: no notifier, so no alert would ever be sent: give `slack_webhook_env` (a variable holding a Slack incoming-webhook URL), `command`, or both".into(),
            );
        }
    }
    if let Some(marketplacer) = top.get("marketplacer")
        && let BodyNode::Map(fields) = &marketplacer.value
    {
        if let Some(value) = fields.get("url")
            && let BodyNode::String(url) = &value.value
            && let Err(problem) = crate::marketplacer::endpoint(url)
        {
            error(value.at, problem.to_string());
        }
        if let Some(value) = fields.get("api_key_env") {
            pattern(
                value,
                "marketplacer.api_key_env",
                is_identifier,
                "an environment variable name: letters, digits and `_`, not starting with a digit (the key itself never goes in a file)",
                &mut error,
            );
        }
        let number = |value: &Spanned<BodyNode>| match &value.value {
            BodyNode::Number(n) => n.as_u64(),
            _ => None,
        };
        if let Some(value) = fields.get("page_size")
            && number(value)
                .is_some_and(|n| n == 0 || n > u64::from(crate::marketplacer::MAX_PAGE_SIZE))
        {
            error(
                value.at,
                format!(
                    "marketplacer.page_size must be 1 to {} (Marketplacer serves at most {0} nodes a page)",
                    crate::marketplacer::MAX_PAGE_SIZE
                ),
            );
        }
        if let Some(value) = fields.get("max_attempts")
            && number(value) == Some(0)
        {
            error(
                value.at,
                "marketplacer.max_attempts must be at least 1".into(),
            );
        }
        if let Some(limit) = fields.get("rate_limit")
            && let BodyNode::Map(limit) = &limit.value
            && let Some(value) = limit.get("requests")
            && number(value) == Some(0)
        {
            error(
                value.at,
                "marketplacer.rate_limit: `requests: 0` would never let a request through; give the requests allowed per window, at least 1".into(),
            );
        }
    }
    if let Some(reconcile) = top.get("reconcile")
        && let BodyNode::Map(fields) = &reconcile.value
        && fields.contains_key("schedule")
        && !top.contains_key("marketplacer")
    {
        error(
            key_at("reconcile", reconcile),
            "reconcile: a schedule needs the instance to read: add `marketplacer: { url: https://… }`".into(),
        );
    }
    out
}

/// An ISO 4217 code, as Klaviyo takes it: three capitals that name a currency.
fn currency(value: &Spanned<BodyNode>, what: &str, error: &mut impl FnMut(Position, String)) {
    let BodyNode::String(code) = &value.value else {
        return;
    };
    if iso_currency::Currency::from_code(code).is_some() {
        return;
    }
    let upper = code.trim().to_ascii_uppercase();
    let message = if iso_currency::Currency::from_code(&upper).is_some() {
        format!(
            "{what} `{code}`: write currency codes in capitals, `{upper}`, as Klaviyo expects them"
        )
    } else {
        // A country code (`NZ`) is the usual slip: ISO 4217 codes mostly start with one.
        let guesses: Vec<String> = match upper.len() {
            2 => (b'A'..=b'Z')
                .map(|c| format!("{upper}{}", c as char))
                .filter(|c| iso_currency::Currency::from_code(c).is_some())
                .collect(),
            _ => Vec::new(),
        };
        let hint = match guesses.as_slice() {
            [] => String::new(),
            [one] => format!("; did you mean {one}?"),
            many => format!("; did you mean one of {}?", many.join(", ")),
        };
        format!(
            "{what} `{code}` is not an ISO 4217 currency code (three capitals, such as AUD or NZD){hint}"
        )
    };
    error(value.at, message);
}

fn pattern(
    value: &Spanned<BodyNode>,
    what: &str,
    ok: impl Fn(&str) -> bool,
    expected: &str,
    error: &mut impl FnMut(Position, String),
) {
    if let BodyNode::String(text) = &value.value
        && !ok(text)
    {
        error(value.at, format!("{what} `{text}` is not {expected}"));
    }
}

fn is_region(text: &str) -> bool {
    text.len() == 2 && text.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn one_of(listed: &[String]) -> String {
    match listed {
        [] => "name the client's Marketplacer vertical".into(),
        _ => format!("one of {}", listed.join(", ")),
    }
}

/// `; did you mean X?` for the closest name, when one is close enough to be a slip.
pub(crate) fn did_you_mean<'a>(wrong: &str, names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|name| (strsim_distance(wrong, name), name))
        .filter(|(distance, name)| *distance <= (name.len() / 3).max(2))
        .min()
        .map(|(_, name)| format!("; did you mean `{name}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance, small strings only.
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Where a key was written: a value's position is known, its key's is not, so the key is
/// looked for on the value's line and the lines above it (a block map puts the value below).
pub(crate) fn key_position(text: &str, key: &str, value_at: Position) -> Position {
    let lines: Vec<&str> = text.lines().collect();
    let last = value_at.line.min(lines.len());
    for line in (1..=last).rev() {
        let source = lines[line - 1];
        let found = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .filter_map(|written| source.find(written.as_str()))
        .min();
        if let Some(column) = found {
            return Position {
                line,
                column: column + 1,
                ..value_at
            };
        }
    }
    value_at
}

/// The metric roles the mappings read as `settings.metrics.ROLE` (or `settings.metrics['ROLE']`),
/// or `None` when one reads `settings.metrics` whole, so no role can be called unused.
pub(super) fn metric_roles_read<'a>(
    texts: impl Iterator<Item = &'a str>,
) -> Option<BTreeSet<String>> {
    let mut roles = BTreeSet::new();
    for text in texts {
        for (start, found) in text.match_indices("settings.metrics") {
            let before = text[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let rest = text[start + found.len()..].trim_start();
            let role: String = if let Some(after) = rest.strip_prefix('.') {
                after
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            } else if let Some(after) = rest.strip_prefix('[') {
                let after = after.trim_start();
                let quote = after.chars().next().filter(|q| *q == '\'' || *q == '"');
                match quote {
                    Some(q) => after[1..].chars().take_while(|c| *c != q).collect(),
                    None => return None,
                }
            } else {
                return None;
            };
            if !role.is_empty() {
                roles.insert(role);
            }
        }
    }
    Some(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_templates_and_a_whole_read_allows_any() {
        let roles = metric_roles_read(
            [
                "name: \"{{ settings.metrics.placed_order }}\"",
                "x: \"{{ settings.metrics['a b'] }}\"\n# Klaviyo metrics are named in settings\n",
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            ["a b", "placed_order"]
        );
        assert!(metric_roles_read(["{{ settings.metrics | items }}"].into_iter()).is_none());
    }

    #[test]
    fn close_names_are_suggested_and_far_ones_not() {
        assert_eq!(
            did_you_mean(
                "placed_ordr",
                ["placed_order", "ordered_product"].into_iter()
            ),
            "; did you mean `placed_order`?"
        );
        assert_eq!(did_you_mean("shipping", ["placed_order"].into_iter()), "");
    }
}
