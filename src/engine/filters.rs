//! Filters for the commerce data that mappings handle: money, emails, phones, timestamps, consent.
//!
//! They exist so that a consultant never writes arithmetic or string surgery in a template. Each
//! is strict about what it accepts: a filter that cannot produce a correct value either fails the
//! record (money, timestamps: a wrong number in Klaviyo is worse than a rejected record) or
//! returns `none` with a warning (emails, phones: the record is still mapped, the bad field is
//! left out of the payload and never sent).

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumberFormat, Region};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// Warnings raised by filters during one evaluation. A thread-local rather than template
    /// state because filters that return `none` must still tell the caller why, and minijinja
    /// filters have no other side channel; [`collect_warnings`] scopes it to one call.
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` and returns its result with the warnings filters raised while it ran.
pub fn collect_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    WARNINGS.with(|w| w.borrow_mut().clear());
    let result = f();
    let warnings = WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    (result, warnings)
}

fn warn(message: String) {
    WARNINGS.with(|w| w.borrow_mut().push(message));
}

/// Registers every marketsync filter on `env`.
pub fn register(env: &mut Environment<'_>, default_region: &str) {
    env.add_filter("money", money);
    env.add_filter("email", email);
    let region = default_region.to_owned();
    env.add_filter("e164", move |value: Value, region_arg: Option<Value>| {
        let region = region_arg
            .as_ref()
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .unwrap_or(&region);
        e164(&value, region)
    });
    env.add_filter("iso8601", iso8601);
    env.add_filter("opt_in", opt_in);
    env.add_filter("compact", compact);
    env.add_filter("string", string);
}

/// A filter that an expression may call without minijinja's VM (`Direct` in body.rs): one of
/// ours, a plain function of its value and its text arguments.
pub(crate) type Direct = fn(Value, &[&str]) -> Result<Value, Error>;

/// The direct form of filter `name` called with `args` arguments, if it has one. The phone
/// filter is left out: it reads the settings' region, and only the profile mapping calls it.
pub(crate) fn direct(name: &str, args: usize) -> Option<Direct> {
    Some(match (name, args) {
        ("money", 0) => |value, _| money(value, None),
        ("money", 1) => |value, args| money(value, Some(args[0].to_owned())),
        ("string", 0) => |value, _| Ok(string(value)),
        ("iso8601", 0) => |value, _| iso8601(value),
        ("email", 0) => |value, _| Ok(email(value)),
        _ => return None,
    })
}

/// Replaces minijinja's `string`, which turns `none` into the text "None": a missing optional
/// value must stay empty (and so be left out of the payload), never become a word in it.
fn string(value: Value) -> Value {
    if value.is_none() || value.is_undefined() {
        return Value::from("");
    }
    match value.as_str() {
        Some(_) => value,
        None => Value::from(value.to_string()),
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Minor units to major units, exactly: `15995 | money` is `159.95`, `500 | money("JPY")` is 500.
///
/// Integer division by a power of ten, correctly rounded to the nearest double, prints back as
/// the exact decimal for every amount below 2^53 minor units, so no decimal type is needed.
fn money(value: Value, currency: Option<String>) -> Result<Value, Error> {
    let minor: i64 = match value.kind() {
        ValueKind::Number => i64::try_from(value.clone()).map_err(|_| {
            invalid(format!(
                "money: {value} is not a whole number of minor units"
            ))
        })?,
        ValueKind::String => value
            .as_str()
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| {
                invalid(format!(
                    "money: {value:?} is not a whole number of minor units"
                ))
            })?,
        _ => return Err(invalid(format!("money: expected minor units, got {value}"))),
    };
    if minor.unsigned_abs() >= 1 << 53 {
        return Err(invalid(format!(
            "money: {minor} is too large to convert exactly"
        )));
    }
    let exponent = match currency.as_deref() {
        None => 2,
        Some(code) => iso_currency::Currency::from_code(&code.trim().to_ascii_uppercase())
            .ok_or_else(|| invalid(format!("money: unknown currency {code:?}")))?
            .exponent()
            .unwrap_or(0),
    };
    if exponent == 0 {
        return Ok(Value::from(minor));
    }
    Ok(Value::from(minor as f64 / 10f64.powi(i32::from(exponent))))
}

/// Trims and lowercases an address; anything that is not plausibly one address gives `none`.
///
/// Klaviyo matches profiles on the email exactly, so `Zoe@Example.com ` and `zoe@example.com`
/// must become the same string or one customer becomes two profiles.
fn email(value: Value) -> Value {
    if value.is_none() || value.is_undefined() {
        return Value::from(());
    }
    let Some(raw) = value.as_str() else {
        warn(format!("email {value} is not text; left out"));
        return Value::from(());
    };
    match normalise_email(raw) {
        Some(normalised) => Value::from(normalised),
        None => {
            warn(format!("email {raw:?} is not a valid address; left out"));
            Value::from(())
        }
    }
}

/// The `email` filter's normalisation, for matching outside a template (`marketsync
/// customer`): trimmed (of spaces, `<>` and `mailto:`) and lowercased, or `None` when it is not
/// plausibly one address.
pub fn normalise_email(raw: &str) -> Option<String> {
    let trimmed = raw
        .trim_matches(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .trim_start_matches("mailto:");
    let normalised = trimmed.to_lowercase();
    let plausible = normalised.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && !normalised.chars().any(char::is_whitespace);
    plausible.then_some(normalised)
}

/// A phone number in E.164 (`+61412345678`), read with `region` when it has no country code.
/// A number that cannot be read is `none`, with a warning: it is never sent as written.
fn e164(value: &Value, region: &str) -> Value {
    if value.is_none() || value.is_undefined() {
        return Value::from(());
    }
    let raw = value.to_string();
    if raw.trim().is_empty() {
        return Value::from(());
    }
    match normalise_phone(&raw, region) {
        Some(number) => Value::from(number),
        None => {
            warn(format!(
                "phone {raw:?} cannot be read as an E.164 number (region {region}); left out"
            ));
            Value::from(())
        }
    }
}

/// The `e164` filter's normalisation, for matching outside a template: the number in E.164,
/// read with `region` (an ISO country code, e.g. `AU`) when it has no country code; `None`
/// when it is not a valid number.
pub fn normalise_phone(raw: &str, region: &str) -> Option<String> {
    let region = region.trim().to_ascii_uppercase();
    let key = (region, raw.to_owned());
    if let Some(known) = PHONES_READ.with(|read| read.borrow().get(&key).cloned()) {
        return known;
    }
    let number = match PHONE_NUMBER_UTIL.parse(raw, key.0.parse::<Region>().ok()) {
        Ok(number) if PHONE_NUMBER_UTIL.is_valid_number(&number) => Some(
            PHONE_NUMBER_UTIL
                .format(&number, PhoneNumberFormat::E164)
                .into_owned(),
        ),
        _ => None,
    };
    PHONES_READ.with(|read| {
        let mut read = read.borrow_mut();
        if read.len() >= PHONES_KEPT {
            read.clear();
        }
        read.insert(key, number.clone());
    });
    number
}

/// How many numbers [`PHONES_READ`] keeps a thread; about 400 KB.
const PHONES_KEPT: usize = 4096;

thread_local! {
    /// The numbers this thread has read, by region and text, and what they read as. Reading
    /// one takes about 4 us (parse, check against the region's plan, format), and a customer's
    /// number comes back with each of their orders (and with each seller's invoice of one
    /// order): on 50 MB of lean orders, 15,025 numbers are 10,536 distinct ones.
    static PHONES_READ: RefCell<HashMap<(String, String), Option<String>>> =
        RefCell::new(HashMap::new());
}

/// An ISO 8601 / RFC 3339 timestamp, normalised to UTC with seconds precision.
/// A value that is not a timestamp fails the record: a wrong event time misfires flows.
fn iso8601(value: Value) -> Result<Value, Error> {
    let raw = value
        .as_str()
        .ok_or_else(|| invalid(format!("iso8601: expected a timestamp, got {value}")))?
        .trim();
    let parsed: DateTime<Utc> = DateTime::<FixedOffset>::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S %z").map(|t| t.to_utc()))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .map_err(|_| invalid(format!("iso8601: {raw:?} is not an ISO 8601 timestamp")))?;
    Ok(Value::from(
        parsed.to_rfc3339_opts(SecondsFormat::Secs, false),
    ))
}

/// True only for an explicit opt-in: `true`, `yes`, `1` (any case, as text or value).
/// Everything else, including a missing value, is false: no opt-in, no subscription.
fn opt_in(value: Value) -> bool {
    match value.kind() {
        ValueKind::Bool => value.is_true(),
        ValueKind::Number => i64::try_from(value).is_ok_and(|n| n == 1),
        ValueKind::String => {
            let text = value
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            match text.as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" | "" => false,
                other => {
                    warn(format!(
                        "consent value {other:?} is neither yes/no, true/false nor 1/0; treated as no opt-in"
                    ));
                    false
                }
            }
        }
        _ => false,
    }
}

/// A list without its `none`, undefined and empty-string items.
fn compact(value: Value) -> Result<Value, Error> {
    let items = value
        .try_iter()
        .map_err(|_| invalid(format!("compact: expected a list, got {value}")))?;
    Ok(Value::from(
        items
            .filter(|v| !(v.is_none() || v.is_undefined() || v.as_str() == Some("")))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> (Result<serde_json::Value, String>, Vec<String>) {
        let mut env = Environment::new();
        register(&mut env, "AU");
        let (result, warnings) = collect_warnings(|| {
            env.compile_expression(expr)
                .and_then(|e| e.eval(()))
                .map(|v| serde_json::to_value(&v).unwrap())
                .map_err(|e| e.to_string())
        });
        (result, warnings)
    }

    fn ok(expr: &str) -> serde_json::Value {
        let (result, _) = eval(expr);
        result.unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    #[test]
    fn money_is_exact_from_minor_units() {
        assert_eq!(ok("15995 | money").to_string(), "159.95");
        assert_eq!(ok("1 | money").to_string(), "0.01");
        assert_eq!(ok("10 | money").to_string(), "0.1");
        assert_eq!(ok("-250 | money").to_string(), "-2.5");
        assert_eq!(ok("123456789012 | money").to_string(), "1234567890.12");
        assert_eq!(ok("'15995' | money").to_string(), "159.95");
        assert_eq!(ok("500 | money('JPY')").to_string(), "500");
        assert_eq!(ok("12345 | money('kwd')").to_string(), "12.345");
        assert_eq!(ok("[100, 250] | sum | money").to_string(), "3.5");
    }

    #[test]
    fn money_rejects_what_is_not_minor_units() {
        assert!(eval("1.5 | money").0.unwrap_err().contains("whole number"));
        assert!(eval("'abc' | money").0.is_err());
        assert!(eval("none | money").0.is_err());
        assert!(
            eval("100 | money('XYZ')")
                .0
                .unwrap_err()
                .contains("unknown currency")
        );
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            ok("'  Zoe.Kowalski@Example.COM ' | email"),
            "zoe.kowalski@example.com"
        );
        assert_eq!(ok("'<a@b.co>' | email"), "a@b.co");
        assert_eq!(ok("'Ünïcode@Exämple.de' | email"), "ünïcode@exämple.de");
    }

    #[test]
    fn an_invalid_email_is_none_with_a_warning() {
        for bad in [
            "'not-an-email'",
            "'a@b'",
            "'a b@c.com'",
            "'@x.com'",
            "'a@@b.com'",
        ] {
            let (result, warnings) = eval(&format!("{bad} | email"));
            assert_eq!(result.unwrap(), serde_json::Value::Null, "{bad}");
            assert_eq!(warnings.len(), 1, "{bad}");
        }
        let (result, warnings) = eval("none | email");
        assert_eq!(result.unwrap(), serde_json::Value::Null);
        assert!(warnings.is_empty());
    }

    #[test]
    fn phones_become_e164_with_the_default_region() {
        assert_eq!(ok("'0412 345 678' | e164"), "+61412345678");
        assert_eq!(ok("'(04) 1234-5678' | e164"), "+61412345678");
        assert_eq!(ok("'+61 2 9876 5432' | e164"), "+61298765432");
        assert_eq!(ok("'020 7946 0958' | e164('GB')"), "+442079460958");
        assert_eq!(ok("'0412 345 678' | e164('')"), "+61412345678");
    }

    #[test]
    fn numbers_written_the_ways_people_write_them_read_as_the_number_meant() {
        // A service number with its country code: the `phonenumber` crate (before 5 December)
        // read this as +61300123456, someone else's number.
        assert_eq!(ok("'+61 1300 123 456' | e164"), "+611300123456");
        // The trunk zero in brackets, as Australians and Britons write it abroad.
        assert_eq!(ok("'+61 (0)412 345 678' | e164"), "+61412345678");
        // Full-width digits, from an East Asian keyboard.
        assert_eq!(ok("'０４１２ ３４５ ６７８' | e164"), "+61412345678");
        // E.164 has no extension: the number is sent without it.
        assert_eq!(ok("'0412 345 678;ext=5' | e164"), "+61412345678");
        assert_eq!(ok("'021 123 4567' | e164('NZ')"), "+64211234567");
    }

    #[test]
    fn an_unreadable_phone_is_none_with_a_warning() {
        let (result, warnings) = eval("'12345' | e164");
        assert_eq!(result.unwrap(), serde_json::Value::Null);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("12345"), "{warnings:?}");
        let (result, warnings) = eval("'' | e164");
        assert_eq!(result.unwrap(), serde_json::Value::Null);
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_number_read_again_reads_the_same_and_its_region_still_counts() {
        for _ in 0..2 {
            assert_eq!(
                normalise_phone("020 7946 0958", "gb").as_deref(),
                Some("+442079460958")
            );
            // The same text in another region's plan is another number, or none.
            assert_eq!(normalise_phone("020 7946 0958", "AU"), None);
            assert_eq!(
                normalise_phone("0412 345 678", "AU").as_deref(),
                Some("+61412345678")
            );
        }
        // A number unreadable once warns every time it comes back.
        for _ in 0..2 {
            let (result, warnings) = eval("'12345' | e164");
            assert_eq!(result.unwrap(), serde_json::Value::Null);
            assert_eq!(warnings.len(), 1, "{warnings:?}");
        }
    }

    #[test]
    fn timestamps_are_normalised_to_utc() {
        assert_eq!(
            ok("'2026-03-14T10:15:30+11:00' | iso8601"),
            "2026-03-13T23:15:30+00:00"
        );
        assert_eq!(
            ok("'2026-03-14T10:15:30Z' | iso8601"),
            "2026-03-14T10:15:30+00:00"
        );
        assert_eq!(
            ok("'2026-03-14T10:15:30.123+00:00' | iso8601"),
            "2026-03-14T10:15:30+00:00"
        );
        assert_eq!(
            ok("'2026-03-14 10:15:30 +1100' | iso8601"),
            "2026-03-13T23:15:30+00:00"
        );
        assert!(eval("'yesterday' | iso8601").0.is_err());
        assert!(eval("none | iso8601").0.is_err());
    }

    #[test]
    fn only_an_explicit_yes_opts_in() {
        for yes in ["true", "'true'", "'YES'", "' yes '", "1", "'1'"] {
            assert_eq!(ok(&format!("{yes} | opt_in")), true, "{yes}");
        }
        for no in ["false", "'no'", "0", "'0'", "none", "''", "2"] {
            assert_eq!(ok(&format!("{no} | opt_in")), false, "{no}");
        }
        let (result, warnings) = eval("'maybe' | opt_in");
        assert_eq!(result.unwrap(), false);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn string_keeps_none_empty() {
        assert_eq!(ok("5001 | string"), "5001");
        assert_eq!(ok("none | string"), "");
        assert_eq!(ok("'x' | string"), "x");
    }

    #[test]
    fn compact_drops_empty_items() {
        assert_eq!(
            ok("['a', none, '', 'b'] | compact"),
            serde_json::json!(["a", "b"])
        );
    }
}
