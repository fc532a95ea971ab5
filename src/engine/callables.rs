//! The filters and tests a template names, found by reading its source.
//!
//! minijinja looks filters and tests up only when they run, so a misspelt `| monye` would
//! otherwise surface on the first record that reaches it, in production. Finding the names
//! when a mapping loads lets `validate` report them at their line.

/// What a name after `|` or `is` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callable {
    Filter,
    Test,
}

/// The filters (`x | money`) and tests (`x is defined`) a template or expression names, in
/// order. Text outside `{{ }}`/`{% %}`, comments and string literals is skipped.
pub fn callables(source: &str, is_expression: bool) -> Vec<(Callable, String)> {
    fn identifier(rest: &str) -> &str {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            &rest[..end]
        } else {
            ""
        }
    }
    let mut found = Vec::new();
    let mut in_code = is_expression;
    let mut i = 0;
    while i < source.len() {
        let rest = &source[i..];
        if !in_code {
            if rest.starts_with("{{") || rest.starts_with("{%") {
                in_code = true;
                i += 2;
            } else if rest.starts_with("{#") {
                i += rest.find("#}").map_or(rest.len(), |end| end + 2);
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if !is_expression && (rest.starts_with("}}") || rest.starts_with("%}")) {
            in_code = false;
            i += 2;
        } else if c == '\'' || c == '"' {
            let mut end = 1;
            let bytes = rest.as_bytes();
            while end < bytes.len() && bytes[end] != c as u8 {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            i += end + 1;
        } else if c == '|' {
            let after = rest[1..].trim_start();
            let name = identifier(after);
            if !name.is_empty() {
                found.push((Callable::Filter, name.to_owned()));
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let word = identifier(rest);
            i += word.len();
            if word == "is" {
                let after = source[i..].trim_start();
                let after = after.strip_prefix("not ").map_or(after, str::trim_start);
                let name = identifier(after);
                if !name.is_empty() {
                    found.push((Callable::Test, name.to_owned()));
                }
            }
        } else {
            i += c.len_utf8();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{Callable, callables};

    fn names(source: &str, is_expression: bool) -> Vec<(Callable, String)> {
        callables(source, is_expression)
    }

    #[test]
    fn finds_filters_and_tests_in_code_only() {
        use Callable::{Filter, Test};
        assert_eq!(
            names("x | money(currency) | string", true),
            [(Filter, "money".into()), (Filter, "string".into())]
        );
        assert_eq!(
            names("a is not none and b is defined", true),
            [(Test, "none".into()), (Test, "defined".into())]
        );
        assert_eq!(
            names(
                "text | not a filter {{ x|email }} {# y | nope #}{% if z is odd %}'|no'{% endif %}",
                false
            ),
            [(Filter, "email".into()), (Test, "odd".into())]
        );
        assert_eq!(
            names("'a | b' ~ \"c | d\" | upper", true),
            [(Filter, "upper".into())]
        );
        assert_eq!(names("island | length", true), [(Filter, "length".into())]);
    }
}
