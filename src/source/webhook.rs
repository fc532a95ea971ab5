//! A webhook delivery on the wire: the request Marketplacer sends for it, and its signature.
//!
//! Two sides use this module. `marketsync replay` builds, from a captured delivery, the request
//! Marketplacer would send ([`outgoing`]) and signs it ([`sign`]); a receiver checks that
//! signature ([`verify`]). Both sides use the same two functions, so that they cannot drift apart:
//! a receiver should call [`verify`] rather than write its own comparison.
//!
//! The signature is `Marketplacer-Hmac-256: base64(HMAC-SHA256(key, raw body))` (Marketplacer's
//! sample receiver, `webhook-endpoint-dotnet` `Utility/HmacHash.cs`). It covers the body's
//! bytes exactly as sent, so nothing here ever parses and re-serialises a body: a capture's body
//! goes out byte for byte as it was captured.
//!
//! What it must never do: accept a signature it has not checked over every byte (an empty,
//! short or truncated one, the bug the Standard Webhooks reference verifier had until
//! 2024-02), compare in time that depends on the secret, or accept an empty secret.

use super::{RecordError, header_value};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value as Json;
use serde_json::value::RawValue;
use sha2::Sha256;

/// The signature header.
pub const HMAC_HEADER: &str = "Marketplacer-Hmac-256";
/// Marketplacer's client, as its deliveries name it.
pub const USER_AGENT: &str = "Marketplacer Client/1.0.0";
/// The headers of a capture sent again as they were captured; every other captured header is
/// left out (the signature is made again, hop-by-hop headers belong to that hop).
pub const PASSED_THROUGH: [&str; 3] = [
    "Idempotency-Key",
    "Marketplacer-Sequence",
    "Marketplacer-Vertical",
];

/// `base64(HMAC-SHA256(secret, body))`, the value of [`HMAC_HEADER`].
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` (the value of [`HMAC_HEADER`]) signs `body` with one of `secrets`.
///
/// Several secrets allow a rotation: the receiver accepts the old and the new secret while
/// Marketplacer's webhook is switched over. Empty secrets are ignored (an empty key would sign
/// for anyone). The header must be the padded standard base64 of a full 32-byte tag; the tag is
/// compared in constant time (`Mac::verify_slice`, which also checks the length first).
pub fn verify(secrets: &[&[u8]], body: &[u8], header: &str) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    if tag.len() != 32 {
        return false;
    }
    // Every secret is tried, so the time taken does not say which one matched.
    let mut matched = false;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(body);
        matched |= mac.verify_slice(&tag).is_ok();
    }
    matched
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
    let value: Json = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        RecordError::NotJson(format!("{message} (column {})", e.column()))
    })?;
    let Json::Object(object) = &value else {
        return Err(RecordError::Unrecognised(
            "expected a JSON object (envelope or capture)".into(),
        ));
    };
    let mut headers = Vec::new();
    let (body, captured) = if let (Some(captured), true) =
        (object.get("headers"), object.contains_key("body"))
    {
        #[derive(serde::Deserialize)]
        struct Capture<'a> {
            #[serde(borrow)]
            body: &'a RawValue,
        }
        let capture: Capture = serde_json::from_str(text)
            .map_err(|e| RecordError::NotJson(format!("capture body: {e}")))?;
        let raw = capture.body.get();
        let body = if raw.starts_with('"') {
            let text: String = serde_json::from_str(raw)
                .map_err(|e| RecordError::NotJson(format!("capture body: {e}")))?;
            text.into_bytes()
        } else {
            raw.as_bytes().to_vec()
        };
        (body, Some(captured))
    } else if object.contains_key("payload") || object.contains_key("event_name") {
        (text.as_bytes().to_vec(), None)
    } else if object
        .get("data")
        .is_some_and(|d| d.get("updatedOrders").is_some())
    {
        return Err(RecordError::Unrecognised(
            "a backfill page, which no webhook sends".into(),
        ));
    } else {
        return Err(RecordError::Unrecognised(
            "expected a webhook envelope (`payload`) or a capture (`headers` and `body`)".into(),
        ));
    };
    let captured_header = |name: &str| captured.and_then(|h| header_value(h, name));
    let envelope_id = || -> Option<String> {
        let envelope: Json = serde_json::from_slice(&body).ok()?;
        envelope.get("id")?.as_str().map(str::to_owned)
    };
    let key = captured_header("Idempotency-Key")
        .or_else(envelope_id)
        .unwrap_or_else(|| digest_key(&body));
    let id = envelope_id().unwrap_or_else(|| key.clone());
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
    }
}
