//! Which credential pays for one MCP call, and the logical URL it pays for.
//!
//! The credential is read from the call itself, never from its session: the JSON-RPC
//! request's `_meta["x402/payment"]`, then the HTTP request that carried it
//! (`Authorization: Bearer`, then `payment-signature`). payments-py 1.18's server reads
//! the headers of the most recently created session, so one caller can be charged for
//! another's call (docs: mcp-spec §2); rmcp hands every request its own `_meta` and its
//! own `http::request::Parts`, so that cannot happen here.

use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use rmcp::model::{Extensions, RequestMetaObject};
use serde_json::Value;

use crate::credential::{find_credential, TokenError};
use crate::hashing::RandomState;

/// The `_meta` key of the payment payload (x402 MCP transport).
pub(crate) const META_PAYMENT: &str = "x402/payment";
/// The largest `_meta` payment accepted, as JSON (the SDKs' limit).
const MAX_META_PAYMENT: usize = 65_536;
/// The header the gate reads the chosen credential from.
pub(crate) const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");

/// Payloads larger than this (as JSON) are encoded on every call, not kept: a cache
/// slot then holds a few KiB at most (x402 payloads are ≈ 1 KiB).
const MAX_KEPT_PAYMENT: usize = 4_096;
/// Slots of [`EncodedPayments`] (a power of two).
const ENCODED_SLOTS: usize = 256;

/// The credential of this call as the header value the gate reads, or `None` when it
/// carries none.
///
/// `_meta["x402/payment"]` must be the decoded payload object, as the SDKs' clients
/// send it; it is encoded the way they encode tokens (compact JSON, base64url without
/// padding), once per payload thanks to `encoded`. Any other value there is ignored, as
/// the SDKs do.
///
/// # Errors
/// A header credential that is too large or not visible ASCII.
pub(crate) fn call_credential(
    meta: &RequestMetaObject,
    extensions: &Extensions,
    encoded: &EncodedPayments,
) -> Result<Option<HeaderValue>, TokenError> {
    if let Some(payload) = meta.get(META_PAYMENT).filter(|v| v.is_object()) {
        if let Some(value) = encoded.header_value(payload) {
            return Ok(Some(value));
        }
    }
    let Some(parts) = extensions.get::<Parts>() else {
        return Ok(None);
    };
    match find_credential(&parts.headers, &[AUTHORIZATION, PAYMENT_SIGNATURE])? {
        Some(text) => Ok(Some(sensitive(text)?)),
        None => Ok(None),
    }
}

fn sensitive(text: &str) -> Result<HeaderValue, TokenError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| TokenError::NotUtf8)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A request head holding only the credential, for the gate's steps (which read it
/// from `payment-signature`).
pub(crate) fn credential_head(value: Option<HeaderValue>) -> Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::POST;
    if let Some(value) = value {
        parts.headers.insert(PAYMENT_SIGNATURE, value);
    }
    parts
}

/// In-band payments already encoded, by a keyed hash of the payload's signature: a client pays
/// every call with the same payload, and its encoding (JSON, base64, header check)
/// was the largest part of the paywall's work on a warm call (BENCHMARKS.md §6).
///
/// Direct-mapped: a payload whose slot another holds is encoded again and takes the
/// slot, so the memory is bounded and nothing needs evicting. A hit compares the whole
/// payload, so a hash collision costs an encoding, never another caller's credential.
/// The hash is seeded at random per paywall (callers cannot aim collisions).
pub(crate) struct EncodedPayments<S = RandomState> {
    hasher: S,
    slots: Box<[Mutex<Option<Encoded>>]>,
}

struct Encoded {
    hash: u64,
    payload: Value,
    /// Sensitive: cloning it shares its bytes.
    value: HeaderValue,
}

impl Default for EncodedPayments {
    fn default() -> Self {
        EncodedPayments {
            hasher: RandomState::default(),
            slots: (0..ENCODED_SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl<S: BuildHasher> EncodedPayments<S> {
    /// The header value of `payload`, or `None` when it is larger than the SDKs'
    /// limit (or cannot be written, which a JSON value always can).
    fn header_value(&self, payload: &Value) -> Option<HeaderValue> {
        let hash = self.hasher.hash_one(slot_key(payload));
        // The low bits pick the slot: the hash is foldhash's, well mixed.
        #[allow(clippy::cast_possible_truncation)]
        let slot = &self.slots[hash as usize & (self.slots.len() - 1)];
        if let Some(hit) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            if hit.hash == hash && hit.payload == *payload {
                return Some(hit.value.clone());
            }
        }
        let json = serde_json::to_vec(payload).ok()?;
        if json.len() > MAX_META_PAYMENT {
            return None;
        }
        let encoded = bytes::Bytes::from(URL_SAFE_NO_PAD.encode(&json));
        // base64url is visible ASCII: always a valid header value.
        let mut value = HeaderValue::from_maybe_shared(encoded).ok()?;
        value.set_sensitive(true);
        if json.len() <= MAX_KEPT_PAYMENT {
            // A poisoned slot only ever held a whole entry or none: harmless to reuse.
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Encoded {
                hash,
                payload: payload.clone(),
                value: value.clone(),
            });
        }
        Some(value)
    }
}

/// What picks a payload's slot: its signature (`payload.signature`), unique to the
/// payment and a single string, so hashing it costs a fraction of hashing the whole
/// payload tree (≈ 2 000 instructions a call, BENCHMARKS.md). A payload without one
/// is hashed whole. Either way a hit still compares the whole payload.
fn slot_key(payload: &Value) -> SlotKey<'_> {
    match payload.get("payload").and_then(|p| p.get("signature")) {
        Some(Value::String(signature)) => SlotKey::Signature(signature),
        _ => SlotKey::Whole(payload),
    }
}

#[derive(Hash)]
enum SlotKey<'a> {
    Signature(&'a str),
    Whole(&'a Value),
}

/// The logical URL of a paid item, built as payments-py builds it
/// (`mcp://{server}/tools/{name}`; prompts use the `tools` segment too, as there), but
/// without the arguments in a query: the backend compares origin and path only, and
/// arguments are the caller's data, not ours to send to the backend.
pub(crate) fn logical_url(server: &str, segment: &str, name: &str) -> String {
    // Pushed rather than `format!`ed: built on every paid call.
    let mut url = String::with_capacity(8 + server.len() + segment.len() + name.len());
    for part in ["mcp://", server, "/", segment, "/", name] {
        url.push_str(part);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::hash::BuildHasherDefault;

    fn meta(value: serde_json::Value) -> RequestMetaObject {
        let mut meta = RequestMetaObject::default();
        meta.insert(META_PAYMENT.to_owned(), value);
        meta
    }

    /// A hasher whose every hash is 0.
    #[derive(Default)]
    struct Zero;
    impl std::hash::Hasher for Zero {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {}
    }

    /// The credential text of a call, with a fresh cache.
    fn credential(meta: &RequestMetaObject, extensions: &Extensions) -> Option<String> {
        call_credential(meta, extensions, &EncodedPayments::default())
            .unwrap()
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn with_headers(pairs: &[(&'static str, &str)]) -> Extensions {
        let mut request = http::Request::new(());
        for (name, value) in pairs {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        let mut extensions = Extensions::new();
        extensions.insert(request.into_parts().0);
        extensions
    }

    #[test]
    fn meta_first_then_bearer_then_payment_signature() {
        let headers = with_headers(&[
            ("authorization", "Bearer bbb"),
            ("payment-signature", "ppp"),
        ]);
        let payload = json!({"x402Version": 2, "payload": {"signature": "0x1"}});
        let text = credential(&meta(payload.clone()), &headers).unwrap();
        let decoded: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&text).unwrap()).unwrap();
        assert_eq!(decoded, payload);
        assert_eq!(
            credential(&RequestMetaObject::default(), &headers).as_deref(),
            Some("bbb")
        );
        let only_signature = with_headers(&[("payment-signature", "ppp")]);
        assert_eq!(
            credential(&RequestMetaObject::default(), &only_signature).as_deref(),
            Some("ppp")
        );
    }

    #[test]
    fn a_meta_payment_that_is_not_an_object_is_ignored() {
        let headers = with_headers(&[("authorization", "Bearer bbb")]);
        for value in [json!("eyJhIjoxfQ"), json!([1]), json!(null)] {
            assert_eq!(credential(&meta(value), &headers).as_deref(), Some("bbb"));
        }
        let huge = json!({"pad": "a".repeat(MAX_META_PAYMENT)});
        assert_eq!(credential(&meta(huge), &headers).as_deref(), Some("bbb"));
        assert_eq!(
            credential(&RequestMetaObject::default(), &Extensions::new()),
            None
        );
    }

    #[test]
    fn a_header_credential_that_is_no_header_value_is_refused() {
        let mut extensions = Extensions::new();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.headers.insert(
            "payment-signature",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        extensions.insert(parts);
        let encoded = EncodedPayments::default();
        assert!(call_credential(&RequestMetaObject::default(), &extensions, &encoded).is_err());
    }

    #[test]
    fn the_head_carries_the_credential_unseen_by_debug() {
        let value = sensitive("abc").unwrap();
        let head = credential_head(Some(value));
        assert_eq!(head.headers[PAYMENT_SIGNATURE], "abc");
        assert!(head.headers[PAYMENT_SIGNATURE].is_sensitive());
        assert!(!format!("{head:?}").contains("abc"));
        assert!(credential_head(None).headers.is_empty());
    }

    #[test]
    fn an_encoded_payment_is_reused_only_for_an_equal_payload() {
        let encoded = EncodedPayments::default();
        let alice = json!({"x402Version": 2, "payload": {"signature": "0xa"}});
        let first = encoded.header_value(&alice).unwrap();
        let again = encoded.header_value(&alice.clone()).unwrap();
        assert_eq!(first, again);
        assert!(again.is_sensitive());
        // Every payload with the same hash: a hit must compare the payload itself.
        let colliding = EncodedPayments {
            hasher: BuildHasherDefault::<Zero>::default(),
            slots: vec![Mutex::new(None)].into_boxed_slice(),
        };
        let bob = json!({"x402Version": 2, "payload": {"signature": "0xb"}});
        let bobs = encoded.header_value(&bob).unwrap();
        assert_ne!(first, bobs);
        for _ in 0..2 {
            for (payload, expected) in [(&alice, &first), (&bob, &bobs)] {
                assert_eq!(colliding.header_value(payload).as_ref(), Some(expected));
            }
        }
        // Same signature, different payload (a client reusing one, or a forgery): the
        // same slot, but each gets its own encoding.
        let forged = json!({"x402Version": 2, "payload": {"signature": "0xa"}, "extra": 1});
        let forgeds = encoded.header_value(&forged).unwrap();
        assert_ne!(forgeds, first);
        assert_eq!(encoded.header_value(&alice).as_ref(), Some(&first));
        assert_eq!(encoded.header_value(&forged).as_ref(), Some(&forgeds));
        // A payload with no string signature is cached too, by its whole tree.
        let unsigned = json!({"x402Version": 2, "payload": {"signature": 7}});
        let unsigneds = encoded.header_value(&unsigned).unwrap();
        assert_eq!(encoded.header_value(&unsigned).as_ref(), Some(&unsigneds));
        assert_ne!(unsigneds, first);
        // A payload too large to keep is still encoded, each time.
        let big = json!({"pad": "a".repeat(MAX_KEPT_PAYMENT)});
        assert!(encoded.header_value(&big).is_some());
    }
}
