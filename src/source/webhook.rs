//! A webhook as Marketplacer sends it: its signature, and the capture a receiver keeps.
//!
//! Marketplacer signs an operator webhook with `Marketplacer-Hmac-256`: base64 of
//! HMAC-SHA256(secret, raw body). The signature is checked over the bytes as received, never a
//! re-serialised body, and compared in constant time (`hmac`'s `verify_slice` checks the
//! length first, then compares with `subtle`). During a rotation two secrets are accepted.
//!
//! This module must never log, print or keep a secret, and never keeps the signature header.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value as Json};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Marketplacer-Hmac-256";

/// The headers a capture keeps (the delivery's identity and where it came from); anything
/// else, the signature included, is left out.
pub const KEPT_HEADERS: &[&str] = &[
    "Marketplacer-Vertical",
    "Idempotency-Key",
    "Marketplacer-Sequence",
    "Content-Type",
    "User-Agent",
];

/// The secrets a signature may be made with: the current one, and the previous one while a
/// rotation is under way. Empty when webhooks are not signed. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct Secrets {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} configured)", self.keys.len())
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    /// Not base64, or not made with any configured secret.
    Wrong,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "signature missing",
            Refusal::Wrong => "signature wrong",
        }
    }
}

impl Secrets {
    /// The current secret and, during a rotation, the previous one. An empty secret is refused
    /// (an empty key would make signatures anyone can compute).
    pub fn new(current: Option<&str>, previous: Option<&str>) -> Result<Secrets, &'static str> {
        if current.is_none() && previous.is_some() {
            return Err("a previous secret is set without a current one");
        }
        let mut keys = Vec::new();
        for secret in [current, previous].into_iter().flatten() {
            if secret.trim().is_empty() {
                return Err("is set but empty");
            }
            keys.push(secret.as_bytes().to_vec());
        }
        Ok(Secrets { keys })
    }

    /// Whether webhooks must be signed.
    pub fn configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// A check of one body, fed as it arrives.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            macs: self
                .keys
                .iter()
                .map(|k| Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes any key length"))
                .collect(),
        }
    }

    /// Checks a whole body against the header's value (`None` when the header is absent).
    pub fn verify(&self, body: &[u8], signature: Option<&[u8]>) -> Result<(), Refusal> {
        let mut verifier = self.verifier();
        verifier.update(body);
        verifier.finish(signature)
    }
}

/// The running HMACs of one body, one per secret.
pub struct Verifier {
    macs: Vec<Hmac<Sha256>>,
}

impl Verifier {
    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// Accepts when no secret is configured, or when the signature is base64 of the HMAC with
    /// any configured secret (compared in constant time, its length included).
    pub fn finish(self, signature: Option<&[u8]>) -> Result<(), Refusal> {
        if self.macs.is_empty() {
            return Ok(());
        }
        let signature = signature
            .map(<[u8]>::trim_ascii)
            .filter(|s| !s.is_empty())
            .ok_or(Refusal::Missing)?;
        let tag = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| Refusal::Wrong)?;
        // Every secret is tried, whichever matches, so the time taken does not say which.
        let mut accepted = false;
        for mac in self.macs {
            accepted |= mac.verify_slice(&tag).is_ok();
        }
        if accepted {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// The signature of `body` with `secret`, as Marketplacer sends it (for tests and senders).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
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
pub fn capture(headers: Map<String, Json>, body: &str) -> String {
    serde_json::json!({ "headers": headers, "body": body }).to_string()
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
            "Secrets(1 configured)"
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
        let records = super::super::parse_delivery(&capture(headers, body)).unwrap();
        assert_eq!(records[0].delivery_id, "petmarket:7");
        assert_eq!(records[0].marketplace.as_deref(), Some("petmarket"));
    }
}
