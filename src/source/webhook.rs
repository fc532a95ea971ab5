//! A webhook as Marketplacer sends it: its signature, and the capture a receiver keeps.
//!
//! Marketplacer signs an operator webhook with `Marketplacer-Hmac-256`: base64 of
//! HMAC-SHA256(secret, raw body). The signature is checked over the bytes as received, never a
//! re-serialised body, and compared in constant time (`hmac`'s `verify_slice` checks the
//! length first, then compares with `subtle`). During a rotation two secrets are accepted.
//!
//! A seller's webhook cannot be signed ("HMAC is currently only available on Operator
//! webhooks"), but it can carry static headers; a receiver then checks a token in
//! [`TOKEN_HEADER`], also in constant time, also with a previous one during a rotation. A
//! webhook is taken when either credential it carries is right.
//!
//! The sending side lives here too: [`outgoing`] builds, from a captured delivery, the request
//! Marketplacer would send (`marketsync replay`), and [`sign`] signs it, so that sender and
//! receiver share one definition of the signature and cannot drift apart.
//!
//! This module must never log, print or keep a secret, and never keeps the signature header.

use super::{RecordError, header_value};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use sha2::Sha256;
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Marketplacer-Hmac-256";
/// The static header a seller's webhook carries instead of a signature.
pub const TOKEN_HEADER: &str = "X-Marketsync-Token";
/// Marketplacer's client, as its deliveries name it.
pub const USER_AGENT: &str = "Marketplacer Client/1.0.0";
/// The headers of a capture sent again as they were captured; every other captured header is
/// left out (the signature is made again, hop-by-hop headers belong to that hop).
pub const PASSED_THROUGH: [&str; 3] = [
    "Idempotency-Key",
    "Marketplacer-Sequence",
    "Marketplacer-Vertical",
];

/// The headers a capture keeps (the delivery's identity and where it came from); anything
/// else, the signature included, is left out.
pub const KEPT_HEADERS: &[&str] = &[
    "Marketplacer-Vertical",
    "Idempotency-Key",
    "Marketplacer-Sequence",
    "Content-Type",
    "User-Agent",
];

/// The secrets a signature may be made with, and the tokens a seller's webhook may carry: the
/// current one of each, and the previous one while a rotation is under way. Empty when
/// webhooks are not checked. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct Secrets {
    keys: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets({} secrets, {} tokens configured)",
            self.keys.len(),
            self.tokens.len()
        )
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    /// Not base64, or not made with any configured secret.
    Wrong,
    /// Only tokens are configured, and the webhook carries none.
    TokenMissing,
    /// The token is none of the configured ones.
    TokenWrong,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "signature missing",
            Refusal::Wrong => "signature wrong",
            Refusal::TokenMissing => "token missing",
            Refusal::TokenWrong => "token wrong",
        }
    }
}

/// The current and previous value of one credential, checked as [`Secrets::new`] says.
fn credentials(
    current: Option<&str>,
    previous: Option<&str>,
) -> Result<Vec<Vec<u8>>, &'static str> {
    if current.is_none() && previous.is_some() {
        return Err("a previous value is set without a current one");
    }
    let mut values = Vec::new();
    for value in [current, previous].into_iter().flatten() {
        if value.trim().is_empty() {
            return Err("is set but empty");
        }
        values.push(value.as_bytes().to_vec());
    }
    Ok(values)
}

impl Secrets {
    /// The current secret and, during a rotation, the previous one. An empty secret is refused
    /// (an empty key would make signatures anyone can compute).
    pub fn new(current: Option<&str>, previous: Option<&str>) -> Result<Secrets, &'static str> {
        Ok(Secrets {
            keys: credentials(current, previous)?,
            tokens: Vec::new(),
        })
    }

    /// These secrets, and the token a seller's webhook carries in [`TOKEN_HEADER`] (current
    /// and previous), refused when empty as a secret is.
    pub fn with_tokens(
        self,
        current: Option<&str>,
        previous: Option<&str>,
    ) -> Result<Secrets, &'static str> {
        Ok(Secrets {
            tokens: credentials(current, previous)?,
            ..self
        })
    }

    /// Whether webhooks must be signed (or carry a token).
    pub fn configured(&self) -> bool {
        !self.keys.is_empty() || !self.tokens.is_empty()
    }

    /// Whether a seller's token is accepted.
    pub fn tokens_configured(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// A check of one body, fed as it arrives.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            macs: self
                .keys
                .iter()
                .map(|k| Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes any key length"))
                .collect(),
            tokens: self.tokens.clone(),
        }
    }

    /// Checks a whole body against the signature header's value (`None` when the header is
    /// absent).
    pub fn verify(&self, body: &[u8], signature: Option<&[u8]>) -> Result<(), Refusal> {
        let mut verifier = self.verifier();
        verifier.update(body);
        verifier.finish(signature, None)
    }
}

/// The running HMACs of one body, one per secret, and the tokens a seller's webhook may carry.
pub struct Verifier {
    macs: Vec<Hmac<Sha256>>,
    tokens: Vec<Vec<u8>>,
}

impl Verifier {
    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// Accepts when nothing is configured, when the signature is base64 of the HMAC with any
    /// configured secret, or when the token (the [`TOKEN_HEADER`] value) is a configured one;
    /// each compared in constant time. A refusal names the credential the webhook carried.
    pub fn finish(self, signature: Option<&[u8]>, token: Option<&[u8]>) -> Result<(), Refusal> {
        let (signing, tokens) = (!self.macs.is_empty(), !self.tokens.is_empty());
        if !signing && !tokens {
            return Ok(());
        }
        fn present(value: Option<&[u8]>) -> Option<&[u8]> {
            value.map(<[u8]>::trim_ascii).filter(|v| !v.is_empty())
        }
        let signature = present(signature).filter(|_| signing);
        let token = present(token).filter(|_| tokens);
        if let Some(token) = token {
            // Every token is compared, whichever matches, so the time taken does not say which.
            let known = self.tokens.iter().fold(false, |found, known| {
                found | bool::from(known.as_slice().ct_eq(token))
            });
            if known {
                return Ok(());
            }
        }
        if let Some(signature) = signature
            && signed_by_any(self.macs, signature)
        {
            return Ok(());
        }
        Err(match (signature, token) {
            (Some(_), _) => Refusal::Wrong,
            (None, Some(_)) => Refusal::TokenWrong,
            (None, None) if signing => Refusal::Missing,
            (None, None) => Refusal::TokenMissing,
        })
    }
}

/// Whether `signature` is base64 of the body's HMAC with any of the secrets (compared in
/// constant time, its length included).
fn signed_by_any(macs: Vec<Hmac<Sha256>>, signature: &[u8]) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(signature) else {
        return false;
    };
    // Every secret is tried, whichever matches, so the time taken does not say which.
    let mut accepted = false;
    for mac in macs {
        accepted |= mac.verify_slice(&tag).is_ok();
    }
    accepted
}

/// The signature of `body` with `secret`, as Marketplacer sends it:
/// `base64(HMAC-SHA256(secret, body))`.
pub fn sign(secret: impl AsRef<[u8]>, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_ref()).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` signs `body` with one of `secrets`: [`Secrets::verify`] for a caller that
/// holds the secrets as bytes (a sender checking its own work, tests). Empty secrets are
/// ignored, and no secret at all verifies nothing.
pub fn verify(secrets: &[&[u8]], body: &[u8], header: &str) -> bool {
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect();
    !keys.is_empty()
        && Secrets {
            keys,
            tokens: Vec::new(),
        }
        .verify(body, Some(header.as_bytes()))
        .is_ok()
}

/// The kept headers of a request, as a capture's `headers` object. `get` looks a header up by
/// name (case-insensitively) and gives its value if it has a readable one.
pub fn kept_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Map<String, Json> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| get(name).map(|v| ((*name).to_owned(), Json::from(v))))
        .collect()
}

/// A received webhook as a capture (`{"headers", "body"}`, the body as the raw text), the
/// shape [`super::records_of`] reads: the vertical header names the marketplace and
/// `Idempotency-Key` is the delivery id when the envelope has none. Kept whole in a dead letter
/// when it cannot be read.
pub fn capture(headers: &Map<String, Json>, body: &str) -> String {
    // Written straight from borrowed parts: building a `json!` tree copied the body and then
    // wrote it through `fmt` (half of this function's time, perf, 4 December).
    #[derive(serde::Serialize)]
    struct Capture<'a> {
        headers: &'a Map<String, Json>,
        body: &'a str,
    }
    serde_json::to_string(&Capture { headers, body }).expect("a capture serialises")
}

/// What a dead letter keeps of a body over the size limit: the headers, the size and the
/// first KiB (as text, bad UTF-8 replaced).
pub fn oversize_capture(headers: Map<String, Json>, size: u64, head: &[u8]) -> String {
    let head = &head[..head.len().min(1024)];
    serde_json::json!({
        "headers": headers,
        "size": size,
        "body_head": String::from_utf8_lossy(head),
    })
    .to_string()
}

/// The request Marketplacer would send for one delivery (before it is signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The delivery's identity in reports: the envelope's `id`, else its Idempotency-Key.
    pub id: String,
    /// Header names and values, in the order they are sent; no signature.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

/// What `outgoing` fills in when a delivery does not carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    /// `Marketplacer-Sequence` for a delivery without one: its place in the replay.
    pub sequence: u64,
    /// `Marketplacer-Vertical` for a delivery without one; none sent when `None`.
    pub vertical: Option<String>,
}

/// The request Marketplacer would send for one delivery as read (one NDJSON line or one `.json`
/// file), unsigned.
///
/// - A capture `{"headers", "body"}`: its body exactly as captured (the text of the `body` value
///   in the capture, or, when the receiver stored the raw body as a JSON string, that string's
///   bytes) and its [`PASSED_THROUGH`] headers.
/// - A bare envelope `{"id", "event_name", "payload"}`: its text exactly (without the blank
///   space around it), `Idempotency-Key` = its `id` (or, with no `id`, a digest of the body),
///   `Marketplacer-Sequence` and `Marketplacer-Vertical` from `defaults`.
///
/// Both get `User-Agent: Marketplacer Client/1.0.0` and `Content-Type: application/json`, as
/// Marketplacer's deliveries do. A backfill page or a bare GraphQL result is refused: webhooks
/// never send those.
pub fn outgoing(text: &str, defaults: &Defaults) -> Result<Outgoing, RecordError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    // The top level only, its values left as text: building the whole delivery as a tree, and
    // the body once more for its id, was most of `replay`'s CPU (perf, 4 December).
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            return RecordError::Unrecognised(
                "expected a JSON object (envelope or capture)".into(),
            );
        }
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        RecordError::NotJson(format!("{message} (column {})", e.column()))
    })?;
    let mut headers = Vec::new();
    let (body, captured) = if let (Some(captured), Some(body)) =
        (top.get("headers"), top.get("body"))
    {
        let captured: Json = serde_json::from_str(captured.get())
            .map_err(|e| RecordError::NotJson(format!("capture headers: {e}")))?;
        let raw = body.get();
        let body = if raw.starts_with('"') {
            let text: String = serde_json::from_str(raw)
                .map_err(|e| RecordError::NotJson(format!("capture body: {e}")))?;
            text.into_bytes()
        } else {
            raw.as_bytes().to_vec()
        };
        (body, Some(captured))
    } else if top.contains_key("payload") || top.contains_key("event_name") {
        (text.as_bytes().to_vec(), None)
    } else if top.get("data").is_some_and(|data| {
        serde_json::from_str::<Json>(data.get()).is_ok_and(|d| d.get("updatedOrders").is_some())
    }) {
        return Err(RecordError::Unrecognised(
            "a backfill page, which no webhook sends".into(),
        ));
    } else {
        return Err(RecordError::Unrecognised(
            "expected a webhook envelope (`payload`) or a capture (`headers` and `body`)".into(),
        ));
    };
    let captured_header = |name: &str| captured.as_ref().and_then(|h| header_value(h, name));
    let id_in_body = envelope_id(&body);
    let key = captured_header("Idempotency-Key")
        .or_else(|| id_in_body.clone())
        .unwrap_or_else(|| digest_key(&body));
    let id = id_in_body.unwrap_or_else(|| key.clone());
    let sequence =
        captured_header("Marketplacer-Sequence").unwrap_or_else(|| defaults.sequence.to_string());
    let vertical = captured_header("Marketplacer-Vertical").or_else(|| defaults.vertical.clone());
    headers.push(("User-Agent".to_owned(), USER_AGENT.to_owned()));
    headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
    headers.push((PASSED_THROUGH[0].to_owned(), key));
    headers.push((PASSED_THROUGH[1].to_owned(), sequence));
    if let Some(vertical) = vertical {
        headers.push((PASSED_THROUGH[2].to_owned(), vertical));
    }
    Ok(Outgoing { id, headers, body })
}

/// The `id` of a body that is a webhook envelope, read without building the rest of it.
fn envelope_id(body: &[u8]) -> Option<String> {
    let envelope: BTreeMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    serde_json::from_str::<Json>(envelope.get("id")?.get())
        .ok()?
        .as_str()
        .map(str::to_owned)
}

/// An Idempotency-Key for a body that brings neither key nor id (Marketplacer's error payloads
/// have no `id`): the same body always gets the same key.
fn digest_key(body: &[u8]) -> String {
    use sha2::Digest;
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(current: &str, previous: Option<&str>) -> Secrets {
        Secrets::new(Some(current), previous).unwrap()
    }

    #[test]
    fn a_signature_with_the_current_or_previous_secret_verifies() {
        let body = br#"{"id":"E1"}"#;
        let both = secrets("new", Some("old"));
        assert_eq!(
            both.verify(body, Some(sign("new", body).as_bytes())),
            Ok(())
        );
        assert_eq!(
            both.verify(body, Some(sign("old", body).as_bytes())),
            Ok(())
        );
        assert_eq!(
            secrets("new", None).verify(body, Some(sign("old", body).as_bytes())),
            Err(Refusal::Wrong)
        );
    }

    fn check(
        secrets: &Secrets,
        body: &[u8],
        signature: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        let mut verifier = secrets.verifier();
        verifier.update(body);
        verifier.finish(signature.map(str::as_bytes), token.map(str::as_bytes))
    }

    #[test]
    fn a_seller_token_is_accepted_in_place_of_a_signature() {
        let body = br#"{"id":"E1"}"#;
        let tokens_only = Secrets::default()
            .with_tokens(Some("t-new"), Some("t-old"))
            .unwrap();
        assert!(tokens_only.configured());
        assert_eq!(check(&tokens_only, body, None, Some("t-new")), Ok(()));
        assert_eq!(check(&tokens_only, body, None, Some(" t-old\n")), Ok(()));
        assert_eq!(
            check(&tokens_only, body, None, Some("t-ne")),
            Err(Refusal::TokenWrong)
        );
        assert_eq!(
            check(&tokens_only, body, None, Some("t-newer")),
            Err(Refusal::TokenWrong)
        );
        assert_eq!(
            check(&tokens_only, body, None, Some("")),
            Err(Refusal::TokenMissing)
        );
        assert_eq!(
            check(&tokens_only, body, None, None),
            Err(Refusal::TokenMissing)
        );
        // A signature means nothing when no secret is set; the token is still needed.
        let signed = sign("t-new", body);
        assert_eq!(
            check(&tokens_only, body, Some(&signed), None),
            Err(Refusal::TokenMissing)
        );

        // Operator webhooks signed, seller webhooks with a token, to the same receiver.
        let both = secrets("s3cret", None)
            .with_tokens(Some("t-new"), None)
            .unwrap();
        let signed = sign("s3cret", body);
        assert_eq!(check(&both, body, Some(&signed), None), Ok(()));
        assert_eq!(check(&both, body, None, Some("t-new")), Ok(()));
        assert_eq!(check(&both, body, Some("AA=="), None), Err(Refusal::Wrong));
        assert_eq!(
            check(&both, body, Some("AA=="), Some("nope")),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            check(&both, body, None, Some("nope")),
            Err(Refusal::TokenWrong)
        );
        assert_eq!(check(&both, body, None, None), Err(Refusal::Missing));
        // Unsigned receivers take a token-less webhook, as before.
        assert_eq!(check(&Secrets::default(), body, None, Some("x")), Ok(()));
    }

    #[test]
    fn empty_tokens_are_refused_and_debug_shows_none() {
        assert!(Secrets::default().with_tokens(Some("  "), None).is_err());
        assert!(Secrets::default().with_tokens(None, Some("old")).is_err());
        let s = secrets("s3cret", None)
            .with_tokens(Some("t-new"), None)
            .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t-new"),
            "{shown}"
        );
    }

    #[test]
    fn empty_short_or_missing_signatures_are_refused() {
        let body = b"{}";
        let s = secrets("k", None);
        let good = sign("k", body);
        assert_eq!(s.verify(body, None), Err(Refusal::Missing));
        assert_eq!(s.verify(body, Some(b"")), Err(Refusal::Missing));
        assert_eq!(s.verify(body, Some(b"AA==")), Err(Refusal::Wrong));
        assert_eq!(
            s.verify(body, Some(&good.as_bytes()[..8])),
            Err(Refusal::Wrong)
        );
        assert_eq!(s.verify(body, Some(b"not base64!")), Err(Refusal::Wrong));
        assert_eq!(s.verify(b"{} ", Some(good.as_bytes())), Err(Refusal::Wrong));
    }

    #[test]
    fn no_secret_accepts_anything_and_empty_secrets_are_refused() {
        assert_eq!(Secrets::default().verify(b"x", None), Ok(()));
        assert!(Secrets::new(Some(" "), None).is_err());
        assert!(Secrets::new(None, Some("old")).is_err());
        assert_eq!(
            format!("{:?}", secrets("hush", None)),
            "Secrets(1 secrets, 0 tokens configured)"
        );
    }

    #[test]
    fn a_capture_is_read_with_its_vertical_and_idempotency_key() {
        let headers = kept_headers(|name| match name {
            "Marketplacer-Vertical" => Some("petmarket"),
            "Idempotency-Key" => Some("petmarket:7"),
            _ => None,
        });
        let body = r#"{"event_name":"update","payload":{"data":{"node":{"__typename":"Seller","id":"S1"}}}}"#;
        let records = super::super::parse_delivery(&capture(&headers, body)).unwrap();
        assert_eq!(records[0].delivery_id, "petmarket:7");
        assert_eq!(records[0].marketplace.as_deref(), Some("petmarket"));
    }

    #[test]
    fn a_body_read_as_received_gives_what_its_capture_gives() {
        // serve reads records from the body and keeps the capture; a retry reads the capture.
        // Both must agree, errors included, or a dead letter retried would be another record.
        let headers = kept_headers(|name| match name {
            "Marketplacer-Vertical" => Some("petmarket"),
            "Idempotency-Key" => Some("petmarket:7"),
            "Marketplacer-Sequence" => Some("12"),
            _ => None,
        });
        let bodies = [
            r#"{"event_name":"update","payload":{"data":{"node":{"__typename":"Seller","id":"S1"}}}}"#,
            r#"{"id":"E1","event_name":"create","payload":{"data":{"node":{"__typename":"Invoice","note":"say \"hi\"\n\u00e9"}}}}"#,
            r#"{"id":"E2","event_name":"create","errors":[{"message":"boom"}]}"#,
            r#"{"id":"E3","event_name":"create","payload":"#,
            "[1,2]",
            "not json",
            "",
        ];
        for body in bodies {
            let direct = crate::source::received_records(&Json::Object(headers.clone()), body);
            let via_capture = super::super::parse_delivery(&capture(&headers, body));
            assert_eq!(direct, via_capture, "body {body:?}");
        }
        let text = capture(&headers, "x\"y");
        assert_eq!(
            serde_json::from_str::<Json>(&text).unwrap(),
            serde_json::json!({ "headers": headers, "body": "x\"y" })
        );
    }

    const BODY: &[u8] =
        br#"{"id":"E1","event_name":"create","payload":{"data":{"node":{"__typename":"Invoice"}}}}"#;

    fn header(out: &Outgoing, name: &str) -> Option<String> {
        out.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn sign_matches_an_independent_hmac() {
        // RFC 4231 test case 2: key "Jefe".
        let tag = sign(b"Jefe", b"what do ya want for nothing?");
        let hex: String = base64::engine::general_purpose::STANDARD
            .decode(&tag)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_the_signature_and_rotation() {
        let header = sign(b"s3cret", BODY);
        assert!(verify(&[b"s3cret"], BODY, &header));
        assert!(verify(&[b"s3cret"], BODY, &format!(" {header}\n")));
        // Rotation: either secret may have signed.
        assert!(verify(&[b"old", b"s3cret"], BODY, &header));
        assert!(verify(&[b"s3cret", b"old"], BODY, &header));
    }

    #[test]
    fn verify_refuses_what_was_not_signed_with_the_secret_over_these_bytes() {
        let header = sign(b"s3cret", BODY);
        assert!(!verify(&[b"wrong"], BODY, &header));
        assert!(!verify(&[], BODY, &header));
        assert!(!verify(&[b""], BODY, &sign(b"", BODY)), "an empty secret");
        assert!(!verify(&[b"s3cret"], BODY, ""));
        assert!(!verify(&[b"s3cret"], BODY, "not base64!"));
        // Truncated: a shorter tag, and a shorter header text.
        let tag = base64::engine::general_purpose::STANDARD
            .decode(&header)
            .unwrap();
        let short = base64::engine::general_purpose::STANDARD.encode(&tag[..16]);
        assert!(!verify(&[b"s3cret"], BODY, &short));
        assert!(!verify(&[b"s3cret"], BODY, &header[..header.len() - 4]));
        let mut long = tag.clone();
        long.push(0);
        let long = base64::engine::general_purpose::STANDARD.encode(&long);
        assert!(!verify(&[b"s3cret"], BODY, &long));
        // The same JSON written again another way is other bytes.
        let value: Json = serde_json::from_slice(BODY).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert!(!verify(&[b"s3cret"], &pretty, &header));
        let mut spaced = BODY.to_vec();
        spaced.push(b' ');
        assert!(!verify(&[b"s3cret"], &spaced, &header));
    }

    #[test]
    fn an_envelope_goes_as_read_with_its_id_as_key() {
        let text = format!("  {}\r\n", std::str::from_utf8(BODY).unwrap());
        let defaults = Defaults {
            sequence: 7,
            vertical: Some("petmarket".into()),
        };
        let out = outgoing(&text, &defaults).unwrap();
        assert_eq!(out.body, BODY);
        assert_eq!(out.id, "E1");
        assert_eq!(header(&out, "Idempotency-Key").as_deref(), Some("E1"));
        assert_eq!(header(&out, "Marketplacer-Sequence").as_deref(), Some("7"));
        assert_eq!(
            header(&out, "Marketplacer-Vertical").as_deref(),
            Some("petmarket")
        );
        assert_eq!(header(&out, "User-Agent").as_deref(), Some(USER_AGENT));
        assert_eq!(
            header(&out, "Content-Type").as_deref(),
            Some("application/json")
        );
        let out = outgoing(&text, &Defaults::default()).unwrap();
        assert_eq!(header(&out, "Marketplacer-Vertical"), None);
    }

    #[test]
    fn a_capture_sends_its_body_bytes_and_headers() {
        // Spacing inside the body is kept exactly.
        let capture = r#"{"headers": {"idempotency-key": "YmZiOjI1NTI=", "Marketplacer-Sequence": ["2552"], "Marketplacer-Vertical": "bfb", "Host": "x", "Marketplacer-Hmac-256": "old"}, "body": {"id": "E2",  "event_name": "update", "payload": {"data": {"node": {"__typename": "Seller"}}}}}"#;
        let defaults = Defaults {
            sequence: 1,
            vertical: Some("other".into()),
        };
        let out = outgoing(capture, &defaults).unwrap();
        assert_eq!(
            out.body,
            br#"{"id": "E2",  "event_name": "update", "payload": {"data": {"node": {"__typename": "Seller"}}}}"#
        );
        assert_eq!(out.id, "E2");
        let names: Vec<&str> = out.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "User-Agent",
                "Content-Type",
                "Idempotency-Key",
                "Marketplacer-Sequence",
                "Marketplacer-Vertical"
            ]
        );
        assert_eq!(
            header(&out, "Idempotency-Key").as_deref(),
            Some("YmZiOjI1NTI=")
        );
        assert_eq!(
            header(&out, "Marketplacer-Sequence").as_deref(),
            Some("2552")
        );
        assert_eq!(
            header(&out, "Marketplacer-Vertical").as_deref(),
            Some("bfb")
        );
    }

    #[test]
    fn a_capture_of_a_raw_string_body_sends_the_string() {
        let raw = "{\"id\":\"E3\",\n \"payload\":{}}";
        let capture = serde_json::json!({"headers": {}, "body": raw}).to_string();
        let out = outgoing(&capture, &Defaults::default()).unwrap();
        assert_eq!(out.body, raw.as_bytes());
        assert_eq!(out.id, "E3");
        assert_eq!(header(&out, "Idempotency-Key").as_deref(), Some("E3"));
        assert_eq!(header(&out, "Marketplacer-Sequence").as_deref(), Some("0"));
    }

    #[test]
    fn an_envelope_without_id_gets_a_key_from_its_bytes() {
        let text = r#"{"event_name": "update", "payload": {"errors": [{"message": "bad"}]}}"#;
        let a = outgoing(text, &Defaults::default()).unwrap();
        assert!(a.id.starts_with("sha256:"), "{}", a.id);
        assert_eq!(a.id, outgoing(text, &Defaults::default()).unwrap().id);
    }

    #[test]
    fn what_no_webhook_sends_is_refused() {
        let page = r#"{"data": {"updatedOrders": {"nodes": []}}}"#;
        assert!(
            outgoing(page, &Defaults::default())
                .unwrap_err()
                .to_string()
                .contains("backfill page")
        );
        let bare = r#"{"data": {"node": {"__typename": "Invoice"}}}"#;
        assert_eq!(
            outgoing(bare, &Defaults::default()).unwrap_err().reason(),
            "unrecognised"
        );
        assert_eq!(
            outgoing("{nope", &Defaults::default())
                .unwrap_err()
                .reason(),
            "not-json"
        );
        for not_an_object in ["[1, 2]", "\"text\"", "42"] {
            let refused = outgoing(not_an_object, &Defaults::default()).unwrap_err();
            assert!(
                refused.to_string().contains("expected a JSON object"),
                "{not_an_object}: {refused}"
            );
        }
        // Broken in the middle of the body: not JSON, with where it broke.
        let truncated = r#"{"id": "E1", "event_name": "create", "payload": {"data": {"#;
        let refused = outgoing(truncated, &Defaults::default()).unwrap_err();
        assert_eq!(refused.reason(), "not-json");
        assert!(refused.to_string().contains("column"), "{refused}");
    }

    #[test]
    fn an_id_that_is_not_text_is_no_key_and_a_repeated_key_keeps_the_last() {
        let numbered = r#"{"id": 7, "event_name": "create", "payload": {}}"#;
        let out = outgoing(numbered, &Defaults::default()).unwrap();
        assert!(out.id.starts_with("sha256:"), "{}", out.id);
        // As JSON readers (and Marketplacer's serialiser) take it: the last `id` is the one.
        let twice = r#"{"id": "first", "event_name": "create", "payload": {}, "id": "last"}"#;
        let out = outgoing(twice, &Defaults::default()).unwrap();
        assert_eq!(out.id, "last");
        assert_eq!(header(&out, "Idempotency-Key").as_deref(), Some("last"));
    }
}
